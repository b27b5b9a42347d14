"""`cai bench --null-models`: the stream machinery alone, with models that answer at once.

A worker runs every stage with ``NullInference`` (``cai worker --inference null``) on Kafka and
Redis, on topics of its own (a fresh prefix and consumer group), so only Kafka, Faust, Redis and
serialisation are left. Two measurements:

* **idle hops**: prompts fed one at a time, each after the previous one's preference label, so
  every stage is idle when a record reaches it: per-hop latency p50/p99 (from the Kafka
  timestamp of a stage's input to that of its output);
* **ceiling**: ``null_prompts`` prompts fed at once: prompts per second through all four stages
  (first prompt's timestamp to the last preference label's), per-hop latency under that load,
  the CPU seconds of each process (worker, Kafka, Redis, this process feeding) and, from the
  worker's ``cai_stage_phase_seconds``, where a batch's time goes (decode, Redis claims, model
  calls, Kafka sends until acked, Redis done marks, counters), with the mean batch size.
"""

from __future__ import annotations

import logging
import re
import time
import urllib.request
import uuid

from benchmarks.latency import percentiles, stage_latencies
from benchmarks.serving import tree_cpu_seconds

logger = logging.getLogger(__name__)

SHORT = ("prompts", "critique", "revise", "compare", "sft", "preferences")


def _worker_metrics(port: int) -> dict[tuple[str, str], float]:
    """(metric name, label text) -> value from the worker's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for match in re.finditer(r"^(cai_stage_\w+)\{([^}]*)\} ([0-9.e+-]+)$", text, re.MULTILINE):
        out[(match.group(1), match.group(2))] = float(match.group(3))
    return out


def _phase_table(before: dict, after: dict) -> dict:
    """Per stage: batches, mean batch size, and the seconds per batch of each phase."""
    def delta(name: str, labels: str) -> float:
        return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

    table = {}
    for stage in ("policy", "critique", "revise", "compare"):
        batches = delta("cai_stage_batch_seconds_count", f'stage="{stage}"')
        if not batches:
            continue
        row = {"batches": int(batches),
               "mean_batch": round(delta("cai_stage_batch_records_sum",
                                         f'stage="{stage}"') / batches, 1),
               "batch_ms": round(1000 * delta("cai_stage_batch_seconds_sum",
                                              f'stage="{stage}"') / batches, 2)}
        for phase in ("decode", "claim", "process", "send", "done", "count"):
            seconds = delta("cai_stage_phase_seconds_sum", f'phase="{phase}",stage="{stage}"')
            if seconds:
                row[f"{phase}_ms"] = round(1000 * seconds / batches, 2)
        table[stage] = row
    return table


def _hops(by_topic: dict, ids: set[str]) -> dict:
    latencies = stage_latencies(by_topic, ids)
    return {stage: {k: (round(v * 1000, 1) if k != "n" else v) for k, v in
                    percentiles(values).items()}
            for stage, values in latencies.items() if values}


class NullPipeline:
    """A worker with null models on its own topics; ``feed`` and ``collect`` around it."""

    def __init__(self, settings, model: str, rounds: int) -> None:
        from stack.processes import free_port
        from streams.settings import StreamSettings

        self.settings = settings
        self.tag = uuid.uuid4().hex[:8]
        self.stream = StreamSettings(kafka_bootstrap=settings.kafka_address,
                                     topic_prefix=f"bench{self.tag}.",
                                     app_id=f"cai-bench-{self.tag}")
        self.metrics_port = free_port()
        self.model = model
        self.rounds = rounds

    def start(self) -> None:
        from stack import children, services
        from streams.admin import ensure_topics

        services.up(self.settings, None, services=("kafka", "redis"))
        ensure_topics(self.stream)
        env = children.child_env(self.settings, self.model, self.rounds, {
            "CAI_PIPELINE_INFERENCE": "null", "CAI_TOPIC_PREFIX": self.stream.topic_prefix,
            "CAI_APP_ID": self.stream.app_id,
            "CAI_PIPELINE_METRICS_PORT": str(self.metrics_port)})
        children.start(self.settings, {"worker": children.worker_argv()}, env)

    def stop(self) -> None:
        from stack import children

        children.stop(self.settings)

    def _done(self) -> int:
        import redis

        from agents.idempotency import counter_key, namespace_for

        store = redis.Redis.from_url(self.settings.redis_address, decode_responses=True)
        key = counter_key(namespace_for(self.stream.topic_prefix) + "compare", "out")
        return int(store.get(key) or 0)

    def feed_and_wait(self, prompts: list, timeout_s: float) -> float:
        """Feed ``prompts`` and wait for as many more preference labels; returns when done."""
        from agents import feed

        target = self._done() + len(prompts)
        started = time.monotonic()
        feed.publish(prompts, self.stream, progress=False)
        self.feed_s = time.monotonic() - started
        deadline = time.monotonic() + timeout_s
        while self._done() < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"null pipeline: {target - self._done()} of {len(prompts)} "
                                   f"prompts unfinished after {timeout_s:.0f}s; read "
                                   f"{self.settings.logs_dir / 'worker.log'}")
            time.sleep(0.005)
        return time.time()

    def records(self, count: int) -> dict[str, list[dict]]:
        from streams import topics
        from streams.topic_stats import TopicReader

        reader = TopicReader(self.stream.kafka_address)
        try:
            return {short: reader.tail(topics.topic_name(short, self.stream), count)
                    for short in SHORT}
        finally:
            reader.close()

    def process_cpu(self) -> dict[str, float]:
        from stack import children, services

        pids = {"worker": children.child(self.settings, "worker").read_pid()}
        for name in ("kafka", "redis"):
            pids[name] = services.status(self.settings, (name,))[name].pid
        return {name: tree_cpu_seconds(pid) if pid else 0.0 for name, pid in pids.items()}


def run_null(settings, model: str, prompts: list[str], n_ceiling: int, n_idle: int,
             timeout_s: float) -> dict:
    """Both measurements on one null-model worker; returns the figures."""
    from scoring.prompt_sets import Prompt

    bench = NullPipeline(settings, model, rounds=1)
    bench.start()

    def items(kind: str, n: int) -> list:
        return [Prompt(f"null-{bench.tag}-{kind}-{i}", prompts[i % len(prompts)], "harmful",
                       "bench") for i in range(n)]

    try:
        bench.feed_and_wait(items("warmup", 1), timeout_s)  # the group has joined after this
        idle = items("idle", n_idle)
        for item in idle:
            bench.feed_and_wait([item], timeout_s)
            time.sleep(0.05)
        ceiling = items("load", n_ceiling)
        metrics_before = _worker_metrics(bench.metrics_port)
        cpu_before = bench.process_cpu()
        cpu_feed = time.process_time()
        started = time.time()
        finished = bench.feed_and_wait(ceiling, timeout_s)
        feed_s = bench.feed_s
        wall = finished - started
        cpu = {name: round(after - cpu_before[name], 2)
               for name, after in bench.process_cpu().items()}
        cpu["bench (feeding, polling)"] = round(time.process_time() - cpu_feed, 2)
        metrics_after = _worker_metrics(bench.metrics_port)
        by_topic = bench.records(2 * (n_ceiling + n_idle) + 64)
    finally:
        bench.stop()
    load_ids = {p.prompt_id for p in ceiling}
    stamps = [r["_timestamp"] for r in by_topic["prompts"] if r.get("prompt_id") in load_ids]
    last = [r["_timestamp"] for r in by_topic["preferences"] if r.get("prompt_id") in load_ids]
    seconds = max(last) - min(stamps)
    # When each topic received the load's records, relative to the first prompt: a stage whose
    # output starts late or spreads out is where the flow narrows.
    spans = {}
    for short in SHORT:
        times = sorted(r["_timestamp"] for r in by_topic[short] if r.get("prompt_id") in load_ids)
        if times:
            spans[short] = {"first_s": round(times[0] - min(stamps), 3),
                            "last_s": round(times[-1] - min(stamps), 3), "records": len(times)}
    return {
        "prompts": n_ceiling,
        "seconds": round(seconds, 3),
        "prompts_per_s": round(n_ceiling / seconds, 1),
        "feed_s": round(feed_s, 3),
        "topic_spans": spans,
        "hop_ms_idle": _hops(by_topic, {p.prompt_id for p in idle}),
        "hop_ms_under_load": _hops(by_topic, load_ids),
        "cpu_s": cpu,
        "cpu_share_of_wall": round(sum(cpu.values()) / wall, 2),
        "phases_per_batch": _phase_table(metrics_before, metrics_after),
    }
