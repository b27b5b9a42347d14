"""The `cai` command line. Each package adds its own subcommands through ``register``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from cai.processes import ServiceError
from cai.settings import ModelSettings, StackSettings


def _stack_settings(args: argparse.Namespace) -> StackSettings:
    overrides = {}
    if getattr(args, "state_dir", None):
        overrides["state_dir"] = args.state_dir
    return StackSettings(**overrides)


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

    for register in _registrations():
        register(sub)
    return parser


def _registrations():
    """Subcommands that live with the package they drive."""
    from serving.cli import register as serving_register

    return [serving_register]


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
