"""The dashboard's live state: one background thread follows the topics and refreshes a snapshot.

It reads what ``cai monitor`` reads, and keeps reading instead of asking again:

* Kafka: every pipeline topic is followed from ``window`` records before its end
  (``streams.topic_stats.TopicFollower``), so a new record is seen as its fetch returns;
  ``rl-samples`` too: the trainer's online RL samples and their rewards;
  end offsets and the worker's and trainer's committed offsets give totals and lag;
* Redis: the serving policy version, the stages' counters and the trainer's round history
  (``cai:trainer:rounds``, written by ``trainer/publisher.py``);
* the trainer's round folders (when the trainer folder is on this machine): which round
  trained on which prompt, and the version it became;
* a ``cai run`` report, when one is given: the held-out figures per version.

A snapshot is rebuilt at most every ``interval_s`` while records arrive, and every
``IDLE_REBUILD_S`` while none do (for lag, rates and the trainer's rounds): rebuilding every
second cost an idle dashboard 9% of a core, taken from training on a 2-core machine.
``wait_for`` lets the server push each new snapshot. A service that cannot be reached is
named in the snapshot's ``errors`` and tried again; the dashboard never stops for it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path

from agents.idempotency import counter_key, namespace_for
from cai import monitor
from cai.dashboard import views
from core.settings import StackSettings
from serving.publish import REDIS_VERSION_KEY, serving_version
from stack.supervisor import recent_alarms
from streams import topics
from streams.settings import StreamSettings
from trainer import checkpoint as ckpt
from trainer.publisher import REDIS_ROUNDS_KEY

logger = logging.getLogger(__name__)

STAGES = ("policy", "critique", "revise", "compare")
STAGE_TOPICS = (topics.PROMPTS, topics.CRITIQUE, topics.REVISE, topics.COMPARE)
TRAINER_TOPICS = (topics.SFT, topics.PREFERENCES)
# Seconds between rebuilds while no record arrives.
IDLE_REBUILD_S = 5.0
# Longest wait for new records in one poll: records end the wait as they arrive, so a longer
# one costs no delay, only fewer idle wake-ups.
POLL_S = 0.5


class RoundFolders:
    """What the trainer's round folders say of each prompt: the rounds that trained on its
    records or held them in the probe, promoted or rejected, and the version each became."""

    def __init__(self, trainer_dir: Path | None) -> None:
        self.trainer_dir = trainer_dir
        self._rounds: dict[str, dict] = {}           # folder name -> round info
        self._uses: dict[str, list[tuple[str, dict]]] = {}  # prompt id -> (folder, use)
        self._summaries: list[dict] = []
        self._lock = threading.Lock()

    def refresh(self, with_summaries: bool = False) -> None:
        """Read new round folders (and, with ``with_summaries``, every round's summary)."""
        if self.trainer_dir is None:
            return
        with self._lock:
            self._refresh()
        if with_summaries:
            self._summaries = [ckpt.round_summary(f)
                               for f in ckpt.finished_rounds(self.trainer_dir)]

    def _refresh(self) -> None:
        for folder in ckpt.finished_rounds(self.trainer_dir):
            info = self._rounds.get(folder.name)
            if info is None:
                try:
                    info = self._load(folder)
                except (OSError, ValueError) as exc:
                    logger.debug("round folder %s unreadable: %s", folder, exc)
                    continue
                self._rounds[folder.name] = info
            if info["promoted"] and info["version"] is None:
                published = ckpt.read_published(folder)
                info["version"] = published["version"] if published else None

    def _load(self, folder: Path) -> dict:
        state = ckpt.load_state(folder)
        examples = ckpt.load_json(folder, "examples.json")
        for kind in ("sft", "preferences"):
            for example in examples.get(kind, []):
                self._uses.setdefault(example["prompt_id"], []).append((folder.name, {
                    "as": kind, "weight": example.get("weight"),
                    "record_policy_version": example.get("policy_version")}))
        for prompt_id in examples.get("probe_added", []):
            self._uses.setdefault(prompt_id, []).append((folder.name, {"as": "probe"}))
        published = ckpt.read_published(folder)
        return {"round": state.round, "promoted": state.promoted,
                "reasons": state.extra.get("reasons", []),
                "version": published["version"] if published else None}

    def of(self, prompt_id: str) -> list[dict]:
        with self._lock:
            return [{**self._rounds[name], **use} for name, use in self._uses.get(prompt_id, [])]

    def summaries(self) -> list[dict]:
        """Round summaries read from the folders by ``refresh(with_summaries=True)``: for a
        trainer that kept no history in Redis."""
        return self._summaries


class Collector:
    """Follows the pipeline and keeps the newest snapshot; ``start`` runs it in a thread."""

    def __init__(self, stack: StackSettings, stream: StreamSettings,
                 trainer_dir: Path | None = None, report: Path | None = None,
                 window: int = 2000, interval_s: float = 0.5, max_prompts: int = 5000) -> None:
        self.stack, self.stream = stack, stream
        self.report_path = report
        self.window, self.interval_s, self.max_prompts = window, interval_s, max_prompts
        self.names = {topics.topic_name(short, stream): short for short in topics.TOPICS}
        self.records: dict[str, deque] = {short: deque(maxlen=window) for short in topics.TOPICS}
        self.index: OrderedDict[str, dict[str, list[dict]]] = OrderedDict()
        self.folders = RoundFolders(trainer_dir)
        self.seq = 0
        self._snapshot: dict = {"seq": 0, "time": time.time(), "errors": ["starting"]}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._report: tuple[float, dict | None] = (0.0, None)
        self._rounds: list[dict] = []
        self._rounds_seen: tuple = ()

    # --- the thread ----------------------------------------------------------------------
    def start(self) -> Collector:
        self._thread = threading.Thread(target=self._run, name="dashboard-collector", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception as exc:  # any broker error is shown, then retried
                logger.warning("dashboard: lost Kafka (%s); retrying", exc, exc_info=True)
                self._publish_error(f"Kafka at {self.stream.kafka_address}: {exc}")
                self._stop.wait(2.0)

    def _follow(self) -> None:
        from streams.records import RECORDS
        from streams.topic_stats import TopicFollower, TopicReader

        # Strictly decoded: a hostile record is dropped here and never reaches a view.
        follower = TopicFollower(self.stream.kafka_address, self.names, self.window, RECORDS)
        reader = TopicReader(self.stream.kafka_address)
        try:
            next_assignment = 0.0
            last_build = 0.0
            fresh = True
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_assignment:
                    fresh |= follower.refresh_assignment()
                    self.folders.refresh(with_summaries=not self._rounds)
                    next_assignment = now + 5.0
                arrived = follower.poll(POLL_S)
                if arrived:
                    self._add(arrived)
                    fresh = True
                due = now - last_build >= (self.interval_s if fresh else IDLE_REBUILD_S)
                if due:
                    ends = follower.end_offsets()
                    try:
                        self._build(ends, reader)
                    except (KeyError, TypeError, ValueError) as exc:  # odd records are shown
                        logger.exception("dashboard: could not build a snapshot")
                        self._publish_error(f"could not build the views: {exc!r}")
                    last_build, fresh = time.monotonic(), False
        finally:
            follower.close()
            reader.close()

    def _add(self, arrived: list[tuple[str, dict]]) -> None:
        with self._lock:
            for short, record in arrived:
                self.records[short].append(record)
                prompt_id = record.get("prompt_id")
                if not prompt_id or prompt_id == "-":
                    continue
                entry = self.index.get(prompt_id)
                if entry is None:
                    entry = self.index[prompt_id] = {}
                    if len(self.index) > self.max_prompts:
                        self.index.popitem(last=False)
                entry.setdefault(short, []).append(record)

    # --- building a snapshot -------------------------------------------------------------
    def _lag(self, ends: dict, reader) -> dict[str, dict[str, int]]:
        """Per topic, how far the worker's and the trainer's consumer groups are behind."""
        lag: dict[str, dict[str, int]] = {short: {} for short in topics.TOPICS}
        for role, group, shorts in (("worker", self.stream.app_id, STAGE_TOPICS),
                                    ("trainer", topics.TRAINER_GROUP, TRAINER_TOPICS)):
            committed = reader.committed(group)
            for short in shorts:
                parts = [tp for tp in ends if self.names.get(tp.topic) == short]
                if any(tp in committed for tp in parts):
                    lag[short][role] = sum(max(0, ends[tp] - committed.get(tp, 0))
                                           for tp in parts)
        return lag

    def _redis_state(self, errors: list[str]) -> dict:
        import redis

        namespace = namespace_for(self.stream.topic_prefix)
        keys = [counter_key(namespace + stage, what) for stage in STAGES
                for what in ("in", "out", "skipped", "dead")]
        try:
            store = redis.Redis.from_url(self.stack.redis_address, socket_timeout=2,
                                         decode_responses=True)
            version, *counts = store.mget([REDIS_VERSION_KEY, *keys])
            # The history is capped: its length alone stops changing once it is full.
            seen = (store.llen(REDIS_ROUNDS_KEY), store.lindex(REDIS_ROUNDS_KEY, -1))
            if seen != self._rounds_seen:
                self._rounds = [json.loads(r) for r in store.lrange(REDIS_ROUNDS_KEY, 0, -1)]
                self._rounds_seen = seen
        except redis.RedisError as exc:
            errors.append(f"Redis at {self.stack.redis_address}: {exc}")
            return {"version": None, "counters": {}}
        values = iter(int(c or 0) for c in counts)
        counters = {stage: {what: next(values) for what in ("in", "out", "skipped", "dead")}
                    for stage in STAGES}
        return {"version": serving_version(version), "counters": counters}

    def _report_data(self) -> dict | None:
        path = self.report_path
        if path is None or not path.exists():
            return None
        mtime = path.stat().st_mtime
        if mtime != self._report[0]:
            try:
                self._report = (mtime, json.loads(path.read_text()))
            except (OSError, ValueError) as exc:
                logger.warning("dashboard: cannot read the report %s: %s", path, exc)
                self._report = (mtime, None)
        return self._report[1]

    def _build(self, ends: dict, reader) -> None:
        errors: list[str] = []
        lag = self._lag(ends, reader)
        state = self._redis_state(errors)
        rounds = self._rounds or self.folders.summaries()
        totals = {short: 0 for short in topics.TOPICS}
        for tp, end in ends.items():
            totals[self.names[tp.topic]] += end
        with self._lock:
            by_topic = {short: list(records) for short, records in self.records.items()}
        now = time.time()
        snap = {
            "time": now,
            "prefix": self.stream.topic_prefix,
            "serving_policy_version": state["version"],
            "topics": views.topic_flows(
                totals, lag, {s: [r["_timestamp"] for r in rs] for s, rs in by_topic.items()},
                now),
            "in_flight": {short: lag[short].get("worker", 0) for short in STAGE_TOPICS},
            "counters": state["counters"],
            "latency": views.stage_latency(by_topic),
            "rounds": views.timeline(rounds),
            "rounds_total": len(rounds),
            "curve": views.learning_curve(rounds, self._report_data()),
            "principles": monitor.principle_stats(by_topic["sft"], by_topic["preferences"]),
            "judge": monitor.judge_stats(by_topic["preferences"]),
            "examples": views.newest_examples(by_topic["sft"], by_topic["preferences"]),
            "dead_letters": views.dead_letters(by_topic["dead-letter"]),
            "rl": views.rl_samples(by_topic[topics.RL_SAMPLES], rounds[-1] if rounds else None),
            "report": str(self.report_path) if self._report[1] is not None else None,
            "alarms": recent_alarms(self.stack, 10),
            "errors": errors,
        }
        self._publish(snap)

    def _publish(self, snap: dict) -> None:
        with self._changed:
            self.seq += 1
            self._snapshot = {**snap, "seq": self.seq}
            self._changed.notify_all()

    def _publish_error(self, error: str) -> None:
        self._publish({**self._snapshot, "time": time.time(), "errors": [error]})

    # --- what the server asks ------------------------------------------------------------
    def snapshot(self) -> dict:
        with self._lock:
            return self._snapshot

    def wait_for(self, seq: int, timeout_s: float) -> dict:
        """The first snapshot newer than ``seq``, or the current one after ``timeout_s``."""
        with self._changed:
            self._changed.wait_for(lambda: self.seq > seq, timeout=timeout_s)
            return self._snapshot

    def lineage(self, prompt_id: str) -> dict | None:
        with self._lock:
            found = {short: list(records) for short, records in
                     self.index.get(prompt_id, {}).items()}
        return views.lineage(prompt_id, found, self.folders.of(prompt_id))

    def dead_letters(self, stage: str | None, limit: int) -> dict:
        with self._lock:
            records = list(self.records[topics.DEAD_LETTER])
        return views.dead_letters(records, stage, limit, payload_limit=64 * 1024)

    def all_rounds(self) -> list[dict]:
        return views.timeline(self._rounds or self.folders.summaries(), limit=10_000)
