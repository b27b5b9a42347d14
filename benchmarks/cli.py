"""The benchmarks' commands: ``cai bench`` (the pipeline against in-process batched and
sequential runs), ``cai bench-serving`` (Triton against in-process generation, and hot-swap
time) and ``cai bench-dpo`` (one DPO step against TRL's). They print figures; none is a test."""

from __future__ import annotations

import argparse
import json

from core.options import add_command
from core.settings import ModelSettings, StackSettings


def cmd_bench(options, settings: StackSettings, models: ModelSettings) -> int:
    from benchmarks.pipeline import run_bench

    print(json.dumps(run_bench(options, settings, models), indent=2))
    return 0


def cmd_bench_serving(options) -> int:
    from benchmarks.serving import main

    return main(options)


def cmd_bench_dpo(options) -> int:
    from benchmarks.dpo import main

    return main(options)


def cmd_chaos(options) -> int:
    from benchmarks.chaos import main

    return main(options)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the benchmarks to the `cai` parser."""
    from benchmarks.chaos import ChaosOptions
    from benchmarks.dpo import DpoBenchOptions
    from benchmarks.pipeline import BenchOptions
    from benchmarks.serving import ServingBenchOptions

    add_command(sub, "bench", cmd_bench, options=BenchOptions,
                settings={StackSettings: ("state_dir",), ModelSettings: ("model",)},
                help="benchmark: pipeline vs raw batched vs sequential loop (prints figures)",
                description="Runs the same critique/revise/judge workload three ways on one "
                "machine: through the live pipeline, in-process batched (the hardware limit) and "
                "one prompt at a time (a sequential chain that prefills every call, as "
                "chain-based tools do; 'sequential-cached' keeps the few-shot prefix cache "
                "between calls). Prints tokens/s, prompts/min, their ratios, per-stage latency "
                "percentiles and the Kafka+Faust overhead per hop.")
    add_command(sub, "bench-serving", cmd_bench_serving, options=ServingBenchOptions,
                help="benchmark: tokens/s through Triton vs in-process, and hot-swap time",
                description="Starts its own Redis and Triton on free ports in a temporary state "
                "folder, and measures in-process batched generation, Triton with and without "
                "dynamic batching at several concurrencies (paired runs, medians), and the "
                "seconds a hot swap of the policy takes, idle and under load.")
    add_command(sub, "chaos", cmd_chaos, options=ChaosOptions,
                help="fault injection: kill, stop and restart every process while the loop runs",
                description="Starts a private stack on tiny models, feeds uniquely identified "
                "prompts and invalid messages, injects faults (SIGKILL, SIGSTOP, restarts of the "
                "worker, trainer, Triton, Kafka and Redis; worker kills at each delivery step; "
                "scaling 1 -> 3 -> 1) and checks nothing is lost, trained twice or stalled. "
                "--fuzz mixes invalid messages into every topic read; --soak runs for minutes, "
                "logging RSS, Redis keys and lag. Uses several cores: run under the CPU lock.")
    add_command(sub, "bench-dpo", cmd_bench_dpo, options=DpoBenchOptions,
                help="benchmark: one DPO step of this trainer vs TRL's DPOTrainer",
                description="Same model, pairs, batch, length, beta, learning rate and reference "
                "on both sides, each in its own process: median step time and peak memory. TRL "
                "is not a dependency; point --trl-path at a folder holding it.")
