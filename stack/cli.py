"""``cai setup`` (prepare the machine) and ``cai stack up|status|down`` (the local services)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from core.options import add_command, option
from core.settings import ModelSettings, StackSettings


@dataclass
class SetupOptions:
    models: list[str] = option(default_factory=lambda: ["tiny", "smollm2"], metavar="SPEC",
                               help="models to prepare")
    skip_models: bool = option(False, "prepare no model")
    test_tools: bool = option(False, "also install what the browser and Prometheus tests need: "
                                     "Debian's chromium, chromium-driver and prometheus")


@dataclass
class StackOptions:
    action: str | None = option(None, "what to do", positional=True, required=True,
                                choices=("up", "status", "down"))
    json: bool = option(False, "print the status as JSON")
    models: bool = option(True, "render the model repository for --model; --no-models starts "
                                "Triton with an empty one")


def cmd_setup(options: SetupOptions, settings: StackSettings) -> int:
    from stack import setup_machine

    models = () if options.skip_models else tuple(options.models)
    setup_machine.run(settings, with_models=models, test_tools=options.test_tools)
    print("setup: done")
    return 0


def cmd_stack(options: StackOptions, settings: StackSettings, models: ModelSettings) -> int:
    from stack import services

    if options.action == "up":
        statuses = services.up(settings, models if options.models else None)
        services.print_status(settings, statuses, options.json)
        return 0
    if options.action == "status":
        statuses = services.status(settings)
        services.print_status(settings, statuses, options.json)
        return 0 if all(s.healthy for s in statuses.values()) else 1
    stopped = services.down(settings)
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the local stack's subcommands to the `cai` parser."""
    add_command(sub, "setup", cmd_setup, options=SetupOptions, settings={StackSettings: ()},
                help="prepare Redis, Kafka jars, the Triton backend and models (idempotent)",
                description="Install or fetch what the stack needs; a second run skips what is "
                "done.")
    add_command(sub, "stack", cmd_stack, options=StackOptions,
                settings={StackSettings: ("state_dir",), ModelSettings: ("model",)},
                help="start, inspect or stop local Kafka, Redis and Triton",
                description="Manage the local services. Addresses set through "
                "CAI_KAFKA_BOOTSTRAP, CAI_REDIS_URL or CAI_TRITON_HTTP_URL are used as external "
                "services instead.")
