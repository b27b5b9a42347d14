"""The `cai` command line: each package registers its own subcommands, and this module adds
the operations' own (``cai run``, ``cai monitor``, ``cai dashboard``, ``cai grid``), sets up
logging once and runs the command. ``python -m cai`` is the same entry point.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

from agents import cli as agents_cli
from benchmarks import cli as benchmarks_cli
from cai.dashboard.server import DashboardOptions, DashboardSettings
from cai.grid.options import GridCommand, GridError, GridOptions
from cai.run import RunOptions
from core import logs
from core.options import add_command, option
from core.settings import StackSettings
from scoring import cli as scoring_cli
from serving import cli as serving_cli
from stack import cli as stack_cli
from stack.processes import ServiceError
from streams import cli as streams_cli
from streams.settings import StreamSettings
from trainer import cli as trainer_cli


@dataclass
class MonitorOptions:
    once: bool = option(False, "print one snapshot and exit")
    json: bool = option(False, "with --once: print JSON")
    interval: float = option(2.0, "refresh period in seconds")


def cmd_run(options: RunOptions, settings: StackSettings) -> int:
    from cai import run
    from stack import children, services

    try:
        run.run(settings, options)
    except run.RunStateMismatch as exc:
        print(f"cai run: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ncai run: interrupted; stopping the worker and trainer", file=sys.stderr)
        children.stop(settings)
        if not options.keep:
            services.down(settings)
        print("cai run: start it again to resume (fed prompts are not processed twice)",
              file=sys.stderr)
        return 130
    return 0


def cmd_monitor(options: MonitorOptions, settings: StackSettings) -> int:
    from cai import monitor

    stream_settings = StreamSettings()
    if options.once:
        snap = monitor.snapshot(settings, stream_settings)
        if options.json:
            print(json.dumps(snap, indent=2, default=str))
        else:
            from rich.console import Console

            Console().print(monitor.render(snap))
        return 0
    monitor.run(settings, stream_settings, interval_s=options.interval)
    return 0


def cmd_dashboard(options: DashboardOptions, settings: DashboardSettings, stack: StackSettings,
                  stream: StreamSettings) -> int:
    from cai.dashboard import server

    try:
        server.run(settings, options, stack, stream)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_grid(options: GridOptions, command: GridCommand) -> int:
    from cai.grid import driver, report

    try:
        options.check()
    except GridError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if command.rescore:
        if not options.output.exists():
            print(f"error: --rescore needs an earlier report at {options.output}",
                  file=sys.stderr)
            return 2
        result = report.rescore(json.loads(options.output.read_text()))
        report.write(result, options.output)
    else:
        result = driver.run_grid(options, say=lambda m: print(m, file=sys.stderr, flush=True))
    print(report.markdown(result))
    print(f"report: {options.output} and {options.output.with_suffix('.md')}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """The operations' own subcommands."""
    add_command(sub, "run", cmd_run, options=RunOptions, settings={StackSettings: ("state_dir",)},
                help="the main job: stack, worker, trainer, live monitor, evaluation report",
                description="Set up what is missing, start the stack, the worker and the trainer, "
                "feed a built-in mix of harmful and benign prompts, watch the live monitor, then "
                "evaluate the first policy version against the last on held-out prompts. "
                "Ctrl-C stops cleanly; running it again resumes.")
    add_command(sub, "monitor", cmd_monitor, options=MonitorOptions,
                settings={StackSettings: ()},
                help="live view of the topic streams, judge, trainer and serving",
                description="Per-topic rates and consumer lag, prompts in flight per stage, the "
                "newest example, per-principle statistics, judge order agreement, trainer rounds "
                "and the serving policy version. Reads Kafka and Redis only.")
    add_command(sub, "dashboard", cmd_dashboard, options=DashboardOptions,
                settings={DashboardSettings: ("port", "host"), StackSettings: ("state_dir",),
                          StreamSettings: ("kafka_bootstrap",)},
                help="web dashboard of the live loop: streams, latency, versions, learning curve, "
                "lineage, dead letters",
                description="Serves the dashboard on 127.0.0.1 (CAI_DASHBOARD_PORT, default 8090) "
                "with live updates; reads Kafka, Redis and the trainer's round folders. Works "
                "offline: Chart.js comes from `cai setup`.")
    add_command(sub, "grid", cmd_grid, options=(GridOptions, GridCommand),
                help="compare revision x preference strategies in-process (same prompts, budget, "
                "seed) on held-out prompts",
                description="Runs the pipeline's stage functions and the trainer's steps in one "
                "process (no Kafka or Triton) and writes a Markdown + JSON table; "
                "docs/results-log.md.")


# Each package adds the commands it owns, in the order `cai --help` lists them.
REGISTRATIONS = (stack_cli.register, register, agents_cli.register, trainer_cli.register,
                 serving_cli.register, scoring_cli.register, streams_cli.register,
                 benchmarks_cli.register)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cai",
        description="Continuous Constitutional AI: stream prompts through critique -> revise -> "
        "compare agents on Kafka, serve the models on Triton, and train the policy live.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_commands in REGISTRATIONS:
        add_commands(sub)
    return parser


def commands() -> list[str]:
    """Every subcommand `cai --help` lists."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.verbose)
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
