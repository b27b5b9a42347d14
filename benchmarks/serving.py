"""Benchmark: generated tokens/s through Triton against in-process batched generation.

Prints figures; it is not a test. It starts its own Redis + Triton on free ports in a
temporary state folder, so it never touches a running stack, and measures:

* in-process: ``TextGenerator.generate`` on the same prompts, in batches of ``--batch``;
* Triton, dynamic batching on, for each concurrency in ``--concurrency``;
* Triton, dynamic batching off (one request per execute), at the highest concurrency;
  each Triton figure is paired with an in-process run just before it (``--repeats`` pairs,
  medians reported), because on a shared machine the load drifts between runs; tokens per
  CPU-second (the bench process in-process; Triton's server plus its stub processes) is
  reported too, since it does not depend on what else the machine is running;
* hot swap: seconds for ``publish_policy`` of a second checkpoint, idle and under load (in
  place, ``serving/hot_swap.py``), the first answer of the new version, and failed requests.

Run::

    cai bench-serving --model tiny
    cai bench-serving --model smollm2 --prompts 16 --max-new-tokens 32 --concurrency 1,8,16
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from core.options import integers, option

logger = logging.getLogger(__name__)


@dataclass
class ServingBenchOptions:
    model: str = option("tiny", "tiny, smollm2, a folder or hub id")
    prompts: int = option(32, "prompts per measurement")
    max_new_tokens: int = option(32, "tokens per answer")
    temperature: float = option(0.7, "sampling temperature")
    seed: int = option(0, "seed of the first prompt (prompt k: seed + k)")
    threads: int = option(2, "torch threads, in-process and per instance")
    batch: int = option(16, "in-process batch size and Triton max_batch_size")
    queue_delay_us: int = option(10_000, "dynamic batching delay")
    concurrency: list[int] = option(default_factory=lambda: [1, 4, 16], type=integers,
                                    help="comma-separated in-flight client requests")
    repeats: int = option(3, "paired measurements per setting")
    skip_unbatched: bool = option(False, "do not measure without batching")
    skip_swap: bool = option(False, "do not measure hot-swap time")
    swap_only: bool = option(False, "measure only the hot swap (at the highest concurrency)")
    skip_reload: bool = option(False, "do not measure the swap by Triton model reload (the way "
                                      "before in-place swaps) next to the in-place one")
    json: Path | None = option(None, "also write the figures to this file")

TOPICS = [
    "Explain how a bicycle works.", "Write a short poem about the sea.", "What is photosynthesis?",
    "Give three tips for learning a language.", "Describe a rainy day in a city.",
    "How do vaccines train the immune system?", "Summarise the plot of a detective story.",
    "Why is the sky blue?", "What makes a good friend?", "How does a refrigerator keep food cold?",
    "Suggest a healthy breakfast.", "What is the difference between weather and climate?",
    "Tell me a fun fact about octopuses.", "How do I politely decline an invitation?",
    "What is a prime number?", "Describe the smell of fresh bread.",
]


def tree_cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a process and its descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo, seen = 0.0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return total


def make_prompts(n: int) -> list[str]:
    return [TOPICS[i % len(TOPICS)] + ("" if i < len(TOPICS) else f" (variant {i // len(TOPICS)})")
            for i in range(n)]


def bench_inprocess(generator, prompts: list[str], args) -> dict:
    from serving.requests import GenRequest

    requests = [GenRequest(p, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           seed=args.seed + k) for k, p in enumerate(prompts)]
    started, cpu = time.perf_counter(), time.process_time()
    tokens = 0
    for i in range(0, len(requests), args.batch):
        results = generator.generate(requests[i:i + args.batch])
        tokens += sum(s.completion_tokens for r in results for s in r)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"tokens": tokens, "seconds": round(seconds, 2), "tok_s": round(tokens / seconds, 1),
            "tok_per_cpu_s": round(tokens / cpu, 1)}


async def bench_triton(grpc_url: str, prompts: list[str], concurrency: int, args,
                       server_pid: int | None = None) -> dict:
    from serving.client import InferenceClient
    from serving.requests import GenerationParams

    client = InferenceClient(grpc_url, timeout_s=600)
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(k: int, prompt: str) -> int:
        async with gate:
            sent = time.perf_counter()
            params = GenerationParams(max_new_tokens=args.max_new_tokens,
                                      temperature=args.temperature,
                                      seed=args.seed + k)
            [[g]] = await client.generate("policy", [prompt], params)
            latencies.append(time.perf_counter() - sent)
            return g.completion_tokens

    await client.generate("policy", prompts[:1], GenerationParams(max_new_tokens=2))  # warm-up
    cpu = tree_cpu_seconds(server_pid) if server_pid else 0.0
    started = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(k, p) for k, p in enumerate(prompts))))
    seconds = time.perf_counter() - started
    cpu = tree_cpu_seconds(server_pid) - cpu if server_pid else 0.0
    await client.close()
    latencies.sort()
    result = {"concurrency": concurrency, "tokens": tokens, "seconds": round(seconds, 2),
              "tok_s": round(tokens / seconds, 1),
              "p50_latency_s": round(latencies[len(latencies) // 2], 2)}
    if cpu:
        result["tok_per_cpu_s"] = round(tokens / cpu, 1)  # server + all its stubs
    return result


def configure_policy(settings, models, args, batching: bool, hot_swap: bool = True) -> None:
    """Re-render the policy's config with the bench knobs and reload it in Triton."""
    import tritonclient.http as httpclient

    from serving.repository import render_repository

    render_repository(settings.triton_repository, models, settings.cache_dir, roles=("policy",),
                      threads=args.threads, max_batch_size=args.batch, batching=batching,
                      max_queue_delay_us=args.queue_delay_us, hot_swap=hot_swap)
    client = httpclient.InferenceServerClient(settings.triton_http, network_timeout=300)
    client.load_model("policy")
    client.close()


async def bench_swap(settings, checkpoint: Path, prompts: list[str], concurrency: int,
                     args) -> dict:
    """``publish_policy`` of ``checkpoint`` while ``concurrency`` clients keep generating (0 =
    idle): seconds until every instance serves it (``publish_s``), until the first answer that
    the new version made arrives (``first_answer_s``; under load a batch in flight finishes on the
    old version first), and the requests answered and failed meanwhile."""
    from serving.client import InferenceClient
    from serving.publish import publish_policy
    from serving.requests import GenerationParams

    stop = asyncio.Event()
    failures: list[Exception] = []
    answers: list[tuple[float, int]] = []  # (received, version)
    client = InferenceClient(settings.triton_grpc, timeout_s=600, max_retries=0)

    async def worker(k: int) -> None:
        while not stop.is_set():
            try:
                [[g]] = await client.generate("policy", [prompts[k % len(prompts)]],
                                              GenerationParams(max_new_tokens=args.max_new_tokens))
                answers.append((time.perf_counter(), g.model_version))
            except Exception as exc:  # noqa: BLE001
                failures.append(exc)

    workers = [asyncio.create_task(worker(k)) for k in range(concurrency)]
    await asyncio.sleep(2.0 if concurrency else 0)
    started = time.perf_counter()
    version = await asyncio.to_thread(publish_policy, checkpoint, settings, keep_last=10)
    seconds = time.perf_counter() - started
    if concurrency:  # wait for an answer from the new version
        deadline = time.perf_counter() + 600
        while not any(v == version for _, v in answers) and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*workers)
    await client.close()
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed during the swap: {failures[0]}")
    first = min((t for t, v in answers if v == version), default=None)
    return {"clients": concurrency, "version": version, "publish_s": round(seconds, 2),
            "first_answer_s": round(first - started, 2) if first else None,
            "requests": len(answers), "failed": len(failures)}


def paired(generator, settings, prompts: list[str], concurrency: int, args) -> dict:
    """In-process and Triton back to back, ``--repeats`` times: on a shared machine the load
    changes from minute to minute, so the ratio of each pair is more telling than either figure."""
    from stack.services import status

    server_pid = status(settings, ("triton",))["triton"].pid
    pairs = []
    for _ in range(args.repeats):
        local = bench_inprocess(generator, prompts, args)
        remote = asyncio.run(bench_triton(settings.triton_grpc, prompts, concurrency, args,
                                          server_pid))
        pairs.append((local, remote))
        logger.info("c=%d in-process %s triton %s", concurrency, local, remote)
    ratios = sorted(r["tok_s"] / l["tok_s"] for l, r in pairs)
    return {
        "concurrency": concurrency,
        "inprocess_tok_s": statistics.median(l["tok_s"] for l, _ in pairs),
        "triton_tok_s": statistics.median(r["tok_s"] for _, r in pairs),
        "triton_p50_latency_s": statistics.median(r["p50_latency_s"] for _, r in pairs),
        "ratio_median": round(statistics.median(ratios), 3),
        "ratios": [round(x, 3) for x in ratios],
        "inprocess_tok_per_cpu_s": statistics.median(l["tok_per_cpu_s"] for l, _ in pairs),
        "triton_tok_per_cpu_s": statistics.median(r.get("tok_per_cpu_s", 0) for _, r in pairs),
        "cpu_ratio_median": round(statistics.median(
            r.get("tok_per_cpu_s", 0) / l["tok_per_cpu_s"] for l, r in pairs), 3),
    }


def run(args) -> dict:
    from core.settings import ModelSettings, StackSettings
    from serving.models import build_tiny, resolve
    from serving.requests import GenRequest
    from serving.textgen import TextGenerator
    from stack import services as stack
    from stack.processes import free_port

    prompts = make_prompts(args.prompts)
    models = ModelSettings(model=args.model)
    cache_dir = StackSettings().cache_dir
    source = resolve(args.model, cache_dir)
    report: dict = {"model": args.model, "prompts": len(prompts),
                    "max_new_tokens": args.max_new_tokens,
                    "threads": args.threads, "batch": args.batch, "temperature": args.temperature,
                    "repeats": args.repeats}
    generator = None
    if not args.swap_only:  # the in-process side of the throughput pairs
        generator = TextGenerator(source, threads=args.threads)
        generator.generate([GenRequest(prompts[0], max_new_tokens=2)])  # warm-up

    state = Path(tempfile.mkdtemp(prefix="cai-bench-"))
    settings = StackSettings(state_dir=state, redis_port=free_port(), triton_http_port=free_port(),
                             triton_grpc_port=free_port(), triton_metrics_port=free_port(),
                             redis_url=None, triton_http_url=None, triton_grpc_url=None)
    try:
        stack.up(settings, models, services=("redis", "triton"))
        configure_policy(settings, models, args, batching=True)
        report["batched"] = []
        for concurrency in [] if args.swap_only else args.concurrency:
            result = paired(generator, settings, prompts, concurrency, args)
            report["batched"].append(result)
            print(f"dynamic batching: {result}", flush=True)
        top = max(args.concurrency)
        if not args.skip_unbatched and not args.swap_only:
            configure_policy(settings, models, args, batching=False)
            report["unbatched"] = paired(generator, settings, prompts, top, args)
            print(f"no batching:      {report['unbatched']}", flush=True)
        if not args.skip_swap:
            configure_policy(settings, models, args, batching=True)
            second = (build_tiny(cache_dir, seed=1) if args.model.startswith("tiny")
                      else Path(source))
            idle = asyncio.run(bench_swap(settings, second, prompts, 0, args))
            loaded = asyncio.run(bench_swap(settings, second, prompts, top, args))
            report["swap_idle_s"] = idle["publish_s"]
            report["swap_under_load_s"] = loaded["publish_s"]
            report["swap"] = {"idle": idle, "under_load": loaded}
            print(f"hot swap: idle {idle['publish_s']}s, under load ({top} clients) "
                  f"{loaded['publish_s']}s (first answer of the new version after "
                  f"{loaded['first_answer_s']}s), {loaded['requests']} requests, "
                  f"{loaded['failed']} failed", flush=True)
            if not args.skip_reload:
                configure_policy(settings, models, args, batching=True, hot_swap=False)
                report["swap"]["reload_idle"] = asyncio.run(
                    bench_swap(settings, second, prompts, 0, args))
                report["swap"]["reload_under_load"] = asyncio.run(
                    bench_swap(settings, second, prompts, top, args))
                print(f"by Triton reload: idle {report['swap']['reload_idle']['publish_s']}s, "
                      f"under load {report['swap']['reload_under_load']['publish_s']}s",
                      flush=True)
    finally:
        stack.down(settings, services=("redis", "triton"))
    return report


def main(options: ServingBenchOptions) -> int:
    """``cai bench-serving``: print the figures (and write them to ``--json``)."""
    report = run(options)
    print(json.dumps(report, indent=2))
    if options.json:
        options.json.write_text(json.dumps(report, indent=2))
    return 0
