"""The `cai` command line. Each package adds its own subcommands through ``register``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cai.processes import ServiceError
from cai.recipes import DEFAULT_RECIPE, RECIPES
from cai.settings import ModelSettings, StackSettings


def _stack_settings(args: argparse.Namespace) -> StackSettings:
    overrides = {}
    if getattr(args, "state_dir", None):
        overrides["state_dir"] = args.state_dir
    return StackSettings(**overrides)


def _share(text: str) -> float:
    """A fraction in [0, 1] from the command line (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a fraction such as 0.5") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1]; give a fraction such as 0.5")
    return value


def _model_settings(args: argparse.Namespace) -> ModelSettings:
    return ModelSettings(**({"model": args.model} if getattr(args, "model", None) else {}))


def cmd_setup(args: argparse.Namespace) -> int:
    from cai import setup_machine

    models = () if args.skip_models else tuple(args.models)
    setup_machine.run(_stack_settings(args), with_models=models)
    print("setup: done")
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    from cai import stack

    settings = _stack_settings(args)
    if args.action == "up":
        models = None if args.no_models else _model_settings(args)
        statuses = stack.up(settings, models)
        stack.print_status(settings, statuses, args.json)
        return 0
    if args.action == "status":
        statuses = stack.status(settings)
        stack.print_status(settings, statuses, args.json)
        return 0 if all(s.healthy for s in statuses.values()) else 1
    stopped = stack.down(settings)
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def cmd_repository(args: argparse.Namespace) -> int:
    from serving.repository import render_repository

    settings = _stack_settings(args)
    target = render_repository(args.directory, _model_settings(args), settings.cache_dir)
    print(f"rendered the model repository in {target}")
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    import json

    from cai import monitor
    from streams.settings import StreamSettings

    stack_settings, stream_settings = _stack_settings(args), StreamSettings()
    if args.once:
        snap = monitor.snapshot(stack_settings, stream_settings)
        if args.json:
            print(json.dumps(snap, indent=2, default=str))
        else:
            from rich.console import Console

            Console().print(monitor.render(snap))
        return 0
    monitor.run(stack_settings, stream_settings, interval_s=args.interval)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from cai import run, stack

    settings = _stack_settings(args)
    options = run.RunOptions(
        model=args.model or ModelSettings().model, prompts=args.prompts, rounds=args.rounds,
        duration_s=args.duration * 60, report=args.report, keep=args.keep, seed=args.seed,
        eval_harmful=args.eval_harmful, eval_benign=args.eval_benign, recipe=args.recipe,
        benign_share=args.benign_share,
    )
    try:
        run.run(settings, options)
    except run.RunStateMismatch as exc:
        print(f"cai run: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ncai run: interrupted; stopping the worker and trainer", file=sys.stderr)
        run.stop_children(settings)
        if not args.keep:
            stack.down(settings)
        print("cai run: start it again to resume (fed prompts are not processed twice)", file=sys.stderr)
        return 130
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from cai import evaluate, run, splits

    settings, models = _stack_settings(args), _model_settings(args)
    report: dict = {}
    if args.builtin or args.prompts:
        from agents import prompt_sets

        items = (prompt_sets.builtin(args.builtin) if args.builtin
                 else prompt_sets.from_file(args.prompts, args.kind))
        if args.builtin and not args.all_prompts:
            items = splits.held_out_part(items)
        items = items[: args.limit] if args.limit else items
        harmful = [i.prompt for i in items if i.kind == "harmful"]
        benign = [i.prompt for i in items if i.kind == "helpful"]
        source = run.policy_source(settings, models, args.version)
        print(f"eval: policy {source}: {len(harmful)} harmful, {len(benign)} benign prompts", file=sys.stderr)
        report["policies"] = {f"v{args.version or 1}": evaluate.evaluate_policy(
            source, harmful, benign, args.max_new_tokens)}
    if args.judge_file:
        from serving.models import resolve

        judge = resolve(models.for_role("judge"), settings.cache_dir)
        items = evaluate.load_choice_file(args.judge_file)[: args.limit or None]
        report["judge_agreement"] = evaluate.judge_agreement(judge, items).as_dict()
    if args.classifier_check:
        report["classifier_accuracy"] = {
            k: v.as_dict() for k, v in evaluate.classifier_accuracy(args.classifier_check).items()}
    if not report:
        print("error: give --builtin/--prompts, --judge-file or --classifier-check", file=sys.stderr)
        return 2
    if args.report:
        run.write_report(report, args.report)
    else:
        print(evaluate.markdown(report))
        print(json.dumps(report, indent=2))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from agents.constitution import load
    from agents.settings import PipelineSettings
    from cai import bench, run, setup_machine, stack
    from serving.core_share import machine_cores
    from serving.models import resolve
    from serving.settings import ServingSettings
    from serving.textgen import TextGenerator
    from streams.admin import ensure_topics
    from streams.settings import StreamSettings

    settings, models = _stack_settings(args), _model_settings(args)
    pipeline = PipelineSettings(rounds=args.rounds)
    from agents import prompt_sets

    texts = [p.prompt for p in prompt_sets.builtin("harmbench")][: args.prompts]
    work = bench.Workload(texts, args.rounds, pipeline.policy_max_new_tokens, pipeline.critique_max_new_tokens,
                          pipeline.revision_max_new_tokens, pipeline.temperature, pipeline.critic_temperature)
    constitution = load(pipeline.constitution)
    results: dict = {"model": models.model, "prompts": len(texts), "rounds": args.rounds, "modes": {}}
    if "pipeline" in args.modes:
        setup_machine.run(settings, with_models=(models.model,))
        stack.up(settings, models)
        stream = StreamSettings(kafka_bootstrap=settings.kafka_address)
        ensure_topics(stream)
        # The benchmark's workload is the paper's critique/revise/judge chain.
        options = run.RunOptions(model=models.model, rounds=args.rounds, recipe="paper")
        run.start_children(settings, options, names=("worker",))
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(resolve(models.for_role("policy"), settings.cache_dir))
            result, detail = bench.run_pipeline(settings, stream, tokenizer, work, args.timeout)
            results["modes"]["pipeline"] = result.as_dict()
            results["pipeline_detail"] = detail
        finally:
            if not args.keep:
                run.stop_children(settings)
                stack.down(settings)
    source = resolve(models.for_role("policy"), settings.cache_dir)
    dtype = ServingSettings().dtype  # the in-process modes run the weights Triton serves
    threads = args.threads or machine_cores()
    if {"raw", "sequential-cached"} & set(args.modes):
        generator = TextGenerator(source, threads=threads, dtype=dtype)
        if "raw" in args.modes:
            results["modes"]["raw"] = bench.run_raw(generator, constitution, work).as_dict()
        if "sequential-cached" in args.modes:
            results["modes"]["sequential-cached"] = bench.run_sequential(
                generator, constitution, work, name="sequential loop, prefix cache kept").as_dict()
    if "sequential" in args.modes:
        plain = TextGenerator(source, threads=threads, dtype=dtype, prefix_min_tokens=0)
        results["modes"]["sequential"] = bench.run_sequential(
            plain, constitution, work, name="sequential loop, chain-tool style").as_dict()
    modes = results["modes"]
    if "pipeline" in modes:
        for other in ("raw", "sequential", "sequential-cached"):
            if other in modes and modes[other]["tokens_per_s"]:
                results[f"pipeline_vs_{other}"] = round(
                    modes["pipeline"]["tokens_per_s"] / modes[other]["tokens_per_s"], 3)
    print(json.dumps(results, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cai",
        description="Continuous Constitutional AI: stream prompts through critique -> revise -> "
        "compare agents on Kafka, serve the models on Triton, and train the policy live.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("setup", help="prepare Redis, Kafka jars, the Triton backend and models (idempotent)",
                       description="Install or fetch what the stack needs; a second run skips what is done.")
    p.add_argument("--models", nargs="+", default=["tiny", "smollm2"], metavar="SPEC",
                   help="models to prepare (default: tiny smollm2)")
    p.add_argument("--skip-models", action="store_true", help="prepare no model")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("stack", help="start, inspect or stop local Kafka, Redis and Triton",
                       description="Manage the local services. Addresses set through CAI_KAFKA_BOOTSTRAP, "
                       "CAI_REDIS_URL or CAI_TRITON_HTTP_URL are used as external services instead.")
    p.add_argument("action", choices=["up", "status", "down"], help="what to do")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument("--state-dir", help="data, logs and PIDs (default .cai, env CAI_STATE_DIR)")
    p.add_argument("--model", help="model for every role: smollm2, tiny, a folder or a hub id (env CAI_MODEL)")
    p.add_argument("--no-models", action="store_true", help="start Triton with an empty model repository")
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("repository", help="render the Triton model repository from settings",
                       description="Write config.pbtxt and model.py for policy, critic, reviser and judge "
                       "into DIRECTORY, using CAI_MODEL / CAI_<ROLE>_MODEL (used by the Triton container).")
    p.add_argument("action", choices=["render"])
    p.add_argument("directory", type=Path, help="model repository folder to write")
    p.add_argument("--model", help="model for every role (env CAI_MODEL)")
    p.set_defaults(func=cmd_repository)

    p = sub.add_parser("monitor", help="live view of the topic streams, judge, trainer and serving",
                       description="Per-topic rates and consumer lag, prompts in flight per stage, the "
                       "newest example, per-principle statistics, judge order agreement, trainer rounds "
                       "and the serving policy version. Reads Kafka and Redis only.")
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.add_argument("--json", action="store_true", help="with --once: print JSON")
    p.add_argument("--interval", type=float, default=2.0, help="refresh period in seconds")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("run", help="the main job: stack, worker, trainer, live monitor, evaluation report",
                       description="Set up what is missing, start the stack, the worker and the trainer, "
                       "feed a built-in mix of harmful and benign prompts, watch the live monitor, then "
                       "evaluate the first policy version against the last on held-out prompts. "
                       "Ctrl-C stops cleanly; running it again resumes.")
    p.add_argument("--model", help="smollm2 (default), tiny, a folder or a hub id (env CAI_MODEL)")
    p.add_argument("--prompts", type=int, default=24, help="training prompts to feed (default 24)")
    p.add_argument("--benign-share", type=_share, default=0.5,
                   help="share of the fed prompts that are benign (default 0.5); the rest are red-team")
    p.add_argument("--rounds", type=int, default=2, help="critique/revision rounds per prompt")
    p.add_argument("--recipe", choices=sorted(RECIPES), default=DEFAULT_RECIPE,
                   help="how revisions and preference labels are made (default %(default)s, the best "
                        "in docs/strategies.md; 'paper' is critique-revise + judge). CAI_PIPELINE_* "
                        "variables override single settings")
    p.add_argument("--duration", type=float, default=10.0,
                   help="minutes of streaming before evaluation starts (default 10)")
    p.add_argument("--eval-harmful", type=int, default=32, help="held-out harmful prompts to evaluate")
    p.add_argument("--eval-benign", type=int, default=16, help="held-out benign prompts to evaluate")
    p.add_argument("--report", type=Path, default=Path("reports/run.json"),
                   help="JSON report; a Markdown copy is written beside it")
    p.add_argument("--keep", action="store_true", help="leave the stack, worker and trainer running")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--state-dir", help="data, logs and PIDs (default .cai)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("eval", help="harmlessness, non-evasiveness, over-refusal and judge agreement",
                       description="Answers are generated greedily in-process by a policy version (or "
                       "--model) and classified by the documented rule classifier (cai/classify.py). "
                       "Every figure has a 95%% Wilson interval.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--builtin", help="a built-in set (harmbench, donotanswer, advbench, benign); "
                     "only its held-out split unless --all-prompts")
    src.add_argument("--prompts", type=Path, help="JSONL/CSV/txt prompt file")
    p.add_argument("--kind", choices=["harmful", "helpful"], default="harmful", help="kind of file prompts")
    p.add_argument("--all-prompts", action="store_true", help="use the whole built-in set")
    p.add_argument("--limit", type=int, help="evaluate only the first N")
    p.add_argument("--version", type=int, help="policy version from the model repository (default 1)")
    p.add_argument("--model", help="policy/judge model family (env CAI_MODEL)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--judge-file", type=Path, help="labelled two-choice JSONL (prompt, corrects, incorrects)")
    p.add_argument("--classifier-check", type=Path, help="hand-labelled answers (answer, declined, explains_why)")
    p.add_argument("--report", type=Path, help="write JSON (+ .md) here instead of printing")
    p.add_argument("--state-dir", help="state folder holding the model repository (default .cai)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="benchmark: pipeline vs raw batched vs sequential loop (prints figures)",
                       description="Runs the same critique/revise/judge workload three ways on one machine: "
                       "through the live pipeline, in-process batched (the hardware limit) and one prompt at a "
                       "time (a sequential chain that prefills every call, as chain-based tools do; "
                       "'sequential-cached' keeps the few-shot prefix cache between calls). Prints tokens/s, prompts/min, their ratios, per-stage "
                       "latency percentiles and the Kafka+Faust overhead per hop.")
    p.add_argument("--model", help="model for every role (env CAI_MODEL)")
    p.add_argument("--prompts", type=int, default=32, help="prompts in the workload (from harmbench; default 32)")
    p.add_argument("--rounds", type=int, default=1, help="critique/revision rounds")
    p.add_argument("--modes", nargs="+", default=["pipeline", "raw", "sequential", "sequential-cached"],
                   choices=["pipeline", "raw", "sequential", "sequential-cached"])
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for the in-process modes (default: every core, which the Triton "
                   "instances share too)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the pipeline")
    p.add_argument("--keep", action="store_true", help="leave the stack and worker running")
    p.add_argument("--state-dir", help="state folder (default .cai)")
    p.set_defaults(func=cmd_bench)

    for register in _registrations():
        register(sub)
    return parser


def _registrations():
    """Subcommands that live with the package they drive."""
    from agents.cli import register as agents_register
    from serving.cli import register as serving_register
    from trainer.cli import register as trainer_register

    return [agents_register, serving_register, trainer_register]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("kafka", "aiokafka", "faust", "mode"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not args.verbose else logging.DEBUG)
    try:
        return args.func(args) or 0
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
