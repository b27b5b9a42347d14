"""`cai bench`: one workload, three ways, on one machine in one run.

The workload is the pipeline's own: for each prompt, a policy answer, then ``rounds`` of
critique and revision (few-shot prompts from the constitution), then the judge on the initial
answer against the final revision in both orders.

* ``raw``: the same model in-process (``serving.inference.LocalInference``, the engine that
  ``cai grid`` runs too), every step batched over all prompts: the hardware limit.
* ``sequential``: in-process, one prompt at a time through every step, the way chain-based
  tools run a critique/revise loop: every call prefills its whole prompt, with no key/value
  cache kept between calls (a plain ``generate`` per call).
* ``sequential-cached``: the same one-at-a-time loop on this project's engine, which keeps the
  few-shot block's key/value cache between calls. It shows how much of the gap is batching
  and how much is prefix reuse.
* ``pipeline``: the real system: prompts fed to Kafka, Faust agents, Triton with dynamic
  batching; measured from the first feed to the last preference record.

Generated tokens are counted with the model's tokenizer on the texts each mode produced.
For the pipeline it also reports per-stage latency percentiles from Kafka record timestamps
and, per hop, the time not spent inside Triton (Kafka + Faust overhead; clearest with `tiny`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
import uuid
from dataclasses import dataclass, replace

from agents import prompts as templates
from agents.constitution import Constitution
from benchmarks.latency import percentiles, stage_latencies
from core.options import option
from core.settings import ModelSettings, StackSettings
from serving.inference import Inference
from serving.requests import GenerationParams

logger = logging.getLogger(__name__)

MODES = ("null", "pipeline", "raw", "sequential", "sequential-cached", "hot-swap", "dpo")


@dataclass
class BenchOptions:
    prompts: int = option(32, "prompts in the workload (from harmbench)")
    rounds: int = option(1, "critique/revision rounds")
    modes: list[str] = option(default_factory=lambda: list(MODES), choices=MODES,
                              help="which ways to run the workload")
    threads: int | None = option(None, "torch threads for the in-process modes (default: every "
                                       "core, which the Triton instances share too)")
    timeout: float = option(1800.0, "seconds to wait for the pipeline")
    null_prompts: int = option(3000, "null mode: prompts fed at once for the pipeline's ceiling")
    idle_prompts: int = option(30, "null mode: prompts fed one at a time for the idle hop cost")
    keep: bool = option(False, "leave the stack and worker running")
    swap_clients: int = option(16, "hot-swap mode: clients generating while the policy swaps")
    trl_path: str | None = option(None, "dpo mode: folder holding trl (see cai bench-dpo); "
                                        "without it the mode is skipped")


@dataclass
class Workload:
    prompts: list[str]
    rounds: int
    answer_tokens: int
    critique_tokens: int
    revision_tokens: int
    temperature: float
    critic_temperature: float


@dataclass
class ModeResult:
    name: str
    seconds: float
    generated_tokens: int
    prompts: int

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds else 0.0

    @property
    def prompts_per_min(self) -> float:
        return 60 * self.prompts / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {"seconds": round(self.seconds, 2), "generated_tokens": self.generated_tokens,
                "tokens_per_s": round(self.tokens_per_s, 2),
                "prompts_per_min": round(self.prompts_per_min, 2)}


async def _in_process(inference: Inference, constitution: Constitution, work: Workload,
                      batch: list[str], seed: int) -> int:
    """Run the workload on ``batch`` in-process; return generated tokens."""
    tokens = 0
    answers = await inference.generate(
        "policy", [(p, seed + i) for i, p in enumerate(batch)],
        GenerationParams(max_new_tokens=work.answer_tokens, temperature=work.temperature))
    initial = [templates.clean_generation(a[0].text) for a in answers]
    tokens += sum(a[0].completion_tokens for a in answers)
    current = list(initial)
    chain = GenerationParams(temperature=work.critic_temperature, chat=False,
                             stop=tuple(templates.STOP))
    for round_ in range(1, work.rounds + 1):
        principles = [constitution.draw_critique(f"bench-{i}", round_, seed)
                      for i in range(len(batch))]
        critiques = await inference.generate("critic", [
            (templates.critique_prompt(constitution, pr, p, r), seed + i)
            for i, (pr, p, r) in enumerate(zip(principles, batch, current))],
            replace(chain, max_new_tokens=work.critique_tokens))
        tokens += sum(c[0].completion_tokens for c in critiques)
        revisions = await inference.generate("reviser", [
            (templates.revision_prompt(constitution, pr, p, r,
                                       templates.clean_generation(c[0].text)), seed + i)
            for i, (pr, p, r, c) in enumerate(zip(principles, batch, current, critiques))],
            replace(chain, max_new_tokens=work.revision_tokens))
        tokens += sum(r[0].completion_tokens for r in revisions)
        current = [templates.clean_generation(r[0].text) or old
                   for r, old in zip(revisions, current)]
    judge = []
    for i, (p, a, b) in enumerate(zip(batch, initial, current)):
        principle = constitution.draw_comparisons(f"bench-{i}", 0, seed)[0]
        for first, second in ((a, b), (b, a)):
            judge.append(templates.comparison_prompt(constitution, principle, p, first, second))
    await inference.judge(judge, list(templates.JUDGE_CHOICES), cot=False, seed=None)
    return tokens


def run_raw(inference: Inference, constitution, work: Workload, seed: int = 0) -> ModeResult:
    started = time.monotonic()
    tokens = asyncio.run(_in_process(inference, constitution, work, work.prompts, seed))
    return ModeResult("raw batched (in-process)", time.monotonic() - started, tokens,
                      len(work.prompts))


def run_sequential(inference: Inference, constitution, work: Workload, seed: int = 0,
                   name: str = "sequential loop (in-process)") -> ModeResult:
    """One prompt at a time; ``inference``'s engine decides whether prefixes are reused between
    calls."""
    async def one_by_one() -> int:
        return sum([await _in_process(inference, constitution, work, [p], seed + i)
                    for i, p in enumerate(work.prompts)])

    started = time.monotonic()
    tokens = asyncio.run(one_by_one())
    return ModeResult(name, time.monotonic() - started, tokens, len(work.prompts))


def _triton_stats(stack_settings) -> dict[str, dict]:
    """Per model: successful requests and total ns from arrival to response (queue + compute),
    ns queued (summed over requests), and from ``batch_stats`` the batches run (executions),
    the requests they held (inferences) and the ns spent computing them."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(stack_settings.triton_http)
    try:
        stats = client.get_inference_statistics()
    finally:
        client.close()
    out = {}
    for model in stats.get("model_stats", []):
        inference = model["inference_stats"]
        entry = out.setdefault(model["name"], dict.fromkeys(
            ("count", "ns", "queue_ns", "compute_ns", "executions", "inferences"), 0))
        entry["count"] += int(inference["success"].get("count", 0))
        entry["ns"] += int(inference["success"].get("ns", 0))
        entry["queue_ns"] += int(inference.get("queue", {}).get("ns", 0))
        for batch in model.get("batch_stats", []):
            runs = int(batch.get("compute_infer", {}).get("count", 0))
            entry["executions"] += runs
            entry["inferences"] += runs * int(batch.get("batch_size", 0))
            entry["compute_ns"] += sum(int(batch.get(part, {}).get("ns", 0)) for part in
                                       ("compute_input", "compute_infer", "compute_output"))
    return out


def triton_profile(before: dict[str, dict], after: dict[str, dict], wall_s: float) -> dict:
    """Where the pipeline's time went inside Triton, per role: requests, batches run, mean
    batch, seconds queued and computing (summed over requests' batches), and the share of the
    run's wall time that role's instances were computing."""
    profile = {}
    for role, now in after.items():
        was = before.get(role, {})
        delta = {key: now[key] - was.get(key, 0) for key in now}
        if not delta["count"]:
            continue
        executions = delta["executions"] or 1
        profile[role] = {
            "requests": delta["count"], "batches": delta["executions"],
            "mean_batch": round(delta["inferences"] / executions, 1),
            "queue_s_per_request": round(delta["queue_ns"] / delta["count"] / 1e9, 3),
            "compute_s": round(delta["compute_ns"] / 1e9, 2),
        }
        profile[role]["busy_share"] = round(profile[role]["compute_s"] / wall_s, 3)
    return profile


def _feed_and_wait(items, stream_settings, reader, preferences_topic: str,
                   timeout_s: float) -> None:
    """Publish ``items`` and return once every one of them has a preference label."""
    from agents import feed

    ids = {item.prompt_id for item in items}
    feed.publish(items, stream_settings, progress=False)
    deadline = time.monotonic() + timeout_s
    done: set[str] = set()
    while time.monotonic() < deadline and done != ids:
        time.sleep(1.0)
        done = {r["prompt_id"] for r in reader.tail(preferences_topic, 4 * len(ids) + 64)} & ids
    if done != ids:
        raise TimeoutError(f"pipeline finished {len(done)} of {len(ids)} prompts in "
                           f"{timeout_s:.0f}s; is `cai worker` running?")


def run_pipeline(stack_settings, stream_settings, tokenizer, work: Workload, timeout_s: float,
                 warmup: bool = True) -> tuple[ModeResult, dict]:
    """Feed the workload's prompts under fresh ids and wait for every preference label.

    With ``warmup`` one extra prompt goes through first, untimed, so that the consumer group has
    joined and every Triton model has served a request, as the in-process modes start warm too.
    """
    from scoring.prompt_sets import Prompt
    from streams import topics
    from streams.topic_stats import TopicReader

    tag = uuid.uuid4().hex[:8]
    items = [Prompt(f"bench-{tag}-{i}", p, "harmful", "bench") for i, p in enumerate(work.prompts)]
    ids = {item.prompt_id for item in items}
    reader = TopicReader(stream_settings.kafka_address)
    names = {short: topics.topic_name(short, stream_settings)
             for short in ("prompts", "critique", "revise", "compare", "sft", "preferences")}
    try:
        if warmup:
            _feed_and_wait([Prompt(f"bench-{tag}-warmup", work.prompts[0], "harmful", "bench")],
                           stream_settings,
                           reader, names["preferences"], timeout_s)
        before = _triton_stats(stack_settings)
        started = time.time()
        _feed_and_wait(items, stream_settings, reader, names["preferences"], timeout_s)
        window = 4 * len(ids) + 64
        by_topic = {short: reader.tail(name, window * (work.rounds + 1))
                    for short, name in names.items()}
    finally:
        reader.close()
    after = _triton_stats(stack_settings)
    finished = max(r["_timestamp"] for r in by_topic["preferences"] if r.get("prompt_id") in ids)
    tokens = 0
    for record in by_topic["sft"]:
        if record.get("prompt_id") not in ids:
            continue
        texts = [record.get("initial_response", "")]
        for step in json.loads(record.get("steps_json") or "[]"):
            texts += [step.get("critique", ""),
                      step.get("raw_revision") or step.get("revision", "")]
        tokens += sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts if t)
    latencies = stage_latencies(by_topic, ids)
    profile = triton_profile(before, after, finished - started)
    roles = {"policy": "policy", "critique": "critic", "revise": "reviser", "compare": "judge"}
    detail = {"stage_latency_s": {k: percentiles(v) for k, v in latencies.items()},
              "hop_overhead_s": {}, "triton": profile,
              "triton_busy_s": round(sum(row["compute_s"] for row in profile.values()), 2)}
    for stage, role in roles.items():
        count = after.get(role, {}).get("count", 0) - before.get(role, {}).get("count", 0)
        ns = after.get(role, {}).get("ns", 0) - before.get(role, {}).get("ns", 0)
        if count and latencies[stage]:
            triton_s = ns / count / 1e9
            # A judge label is two requests (both orders), sent together and batched by Triton,
            # so one request's time is the stage's time inside Triton.
            overhead = statistics.median(latencies[stage]) - triton_s
            detail["hop_overhead_s"][stage] = round(overhead, 3)
            detail.setdefault("triton_request_s", {})[role] = round(triton_s, 3)
    return ModeResult("pipeline (Kafka + Faust + Triton)", finished - started, tokens,
                      len(items)), detail


def run_bench(options: BenchOptions, settings: StackSettings, models: ModelSettings) -> dict:
    """Run the chosen modes on one workload; returns the figures and their ratios."""
    from agents.constitution import load
    from agents.settings import PipelineSettings
    from scoring import prompt_sets
    from serving.core_share import machine_cores
    from serving.inference import LocalInference
    from serving.models import resolve
    from serving.settings import ServingSettings
    from stack import children, services, setup_machine
    from streams.admin import ensure_topics
    from streams.settings import StreamSettings

    pipeline = PipelineSettings(rounds=options.rounds)
    texts = [p.prompt for p in prompt_sets.builtin("harmbench")][: options.prompts]
    work = Workload(texts, options.rounds, pipeline.policy_max_new_tokens,
                    pipeline.critique_max_new_tokens, pipeline.revision_max_new_tokens,
                    pipeline.temperature, pipeline.critic_temperature)
    constitution = load(pipeline.constitution)
    results: dict = {"model": models.model, "prompts": len(texts), "rounds": options.rounds,
                     "modes": {}}
    if "null" in options.modes:
        from benchmarks.null_pipeline import run_null

        setup_machine.run(settings, with_models=())
        try:
            results["null_models"] = run_null(settings, models.model, texts,
                                              options.null_prompts, options.idle_prompts,
                                              options.timeout)
        finally:
            if "pipeline" not in options.modes and not options.keep:
                services.down(settings)
    if "pipeline" in options.modes:
        setup_machine.run(settings, with_models=(models.model,))
        services.up(settings, models)
        stream = StreamSettings(kafka_bootstrap=settings.kafka_address)
        ensure_topics(stream)
        # The workload is the paper's critique/revise/judge chain: the worker's default settings.
        children.start(settings, {"worker": children.worker_argv()},
                       children.child_env(settings, models.model, options.rounds, {}))
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(
                resolve(models.for_role("policy"), settings.cache_dir))
            result, detail = run_pipeline(settings, stream, tokenizer, work, options.timeout)
            results["modes"]["pipeline"] = result.as_dict()
            results["pipeline_detail"] = detail
        finally:
            if not options.keep:
                children.stop(settings)
                services.down(settings)
    source = resolve(models.for_role("policy"), settings.cache_dir)
    dtype = ServingSettings().dtype  # the in-process modes run the weights Triton serves
    threads = options.threads or machine_cores()
    if {"raw", "sequential-cached"} & set(options.modes):
        cached = LocalInference(source, threads=threads, dtype=dtype)
        cached.generator("policy")  # load before timing; every role shares these weights
        if "raw" in options.modes:
            results["modes"]["raw"] = run_raw(cached, constitution, work).as_dict()
        if "sequential-cached" in options.modes:
            results["modes"]["sequential-cached"] = run_sequential(
                cached, constitution, work, name="sequential loop, prefix cache kept").as_dict()
    if "sequential" in options.modes:
        plain = LocalInference(source, threads=threads, dtype=dtype, prefix_min_tokens=0)
        plain.generator("policy")
        results["modes"]["sequential"] = run_sequential(
            plain, constitution, work, name="sequential loop, chain-tool style").as_dict()
    if "hot-swap" in options.modes:
        from benchmarks.serving import ServingBenchOptions
        from benchmarks.serving import run as run_serving

        swap = run_serving(ServingBenchOptions(
            model=models.model, concurrency=[options.swap_clients], swap_only=True,
            skip_reload=True))
        results["hot_swap"] = swap["swap"]
    if "dpo" in options.modes and options.trl_path:
        from benchmarks.dpo import DpoBenchOptions, compare

        try:
            results["dpo"] = compare(DpoBenchOptions(model=models.model,
                                                     trl_path=options.trl_path))
        except RuntimeError as exc:  # keep the figures measured so far
            results["dpo"] = {"error": str(exc)[-2000:]}
    elif "dpo" in options.modes:
        logger.warning("dpo mode skipped: --trl-path is not set")
    modes = results["modes"]
    if "pipeline" in modes:
        for other in ("raw", "sequential", "sequential-cached"):
            if other in modes and modes[other]["tokens_per_s"]:
                results[f"pipeline_vs_{other}"] = round(
                    modes["pipeline"]["tokens_per_s"] / modes[other]["tokens_per_s"], 3)
    results["table"] = summary_table(results)
    return results


def summary_table(results: dict) -> dict:
    """The headline figures of a run, one entry per row of the performance table."""
    table: dict = {}
    swap = results.get("hot_swap", {}).get("under_load")
    if swap:
        table["hot_swap_under_load"] = {"clients": swap["clients"], "seconds": swap["publish_s"],
                                        "first_new_answer_s": swap["first_answer_s"],
                                        "failed": swap["failed"]}
    null = results.get("null_models")
    if null:
        idle = null["hop_ms_idle"]
        table["null_hop_ms_idle"] = {stage: {"p50": row["p50"], "p99": row["p99"]}
                                     for stage, row in idle.items()}
        table["null_ceiling_prompts_per_s"] = null["prompts_per_s"]
    for other in ("raw", "sequential"):
        if f"pipeline_vs_{other}" in results:
            table[f"pipeline_vs_{other}"] = results[f"pipeline_vs_{other}"]
    dpo = results.get("dpo")
    if dpo and "error" not in dpo:
        table["dpo_vs_trl"] = {"time": round(dpo["ratio_step_time_ours_over_trl"], 3),
                               "peak_memory": round(dpo["ratio_peak_rss_ours_over_trl"], 3),
                               "step_memory_growth": dpo["ratio_step_rss_growth_ours_over_trl"]}
    return table

