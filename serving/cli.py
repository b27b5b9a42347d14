"""Serving subcommands: ``cai publish CHECKPOINT [--role reward]``, ``cai rollback VERSION``,
``cai serve-status`` and ``cai repository render|serve DIRECTORY [--recipe NAME]``.

The first three act on the running stack described by ``StackSettings`` (env ``CAI_*``, or
``--state-dir``): the Triton model repository, Triton's HTTP endpoint and Redis. ``repository
render`` writes a model repository for the configured models (the four generation roles, plus
the reward role when ``--recipe``'s trainer scores with it); ``repository serve`` then runs the
nvidia-pytriton wheel's ``tritonserver`` on it in the foreground (the docker-compose Triton
service), on ``CAI_HOST`` and the ``CAI_TRITON_*_PORT`` ports.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from core.options import add_command, option
from core.recipes import RECIPES
from core.settings import REWARD_ROLE, ROLES, ModelSettings, StackSettings, trainer_roles


@dataclass
class LoadOptions:
    timeout: float = option(300.0, "seconds to wait for the load")
    keep_last: int = option(3, "published policy versions to keep on disk (v1 is always kept)")


@dataclass
class PublishOptions(LoadOptions):
    checkpoint: str | None = option(
        None, "folder written by save_pretrained (config.json, *.safetensors)", positional=True,
        required=True)
    role: str = option("policy", "the role that serves it: the policy, or the reward role (a "
                                 "saved preference model)", choices=("policy", REWARD_ROLE))


@dataclass
class RollbackOptions(LoadOptions):
    version: int | None = option(None, "a policy version still on disk (see serve-status)",
                                 positional=True, required=True)


@dataclass
class StatusOptions:
    json: bool = option(False, "print JSON")


@dataclass
class RepositoryOptions:
    action: str | None = option(None, "what to do", positional=True, required=True,
                                choices=("render", "serve"))
    directory: Path | None = option(None, "model repository folder to write", positional=True,
                                    required=True)
    recipe: str | None = option(None, "also render the roles this recipe's trainer calls (the "
                                      "reward role for a trainer in rloo mode)",
                                choices=sorted(RECIPES))


def cmd_publish(options: PublishOptions, settings: StackSettings) -> int:
    from serving.publish import PublishError, publish_role

    try:
        version = publish_role(options.role, options.checkpoint, settings,
                               keep_last=options.keep_last, timeout_s=options.timeout)
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{options.role} v{version} is serving {options.checkpoint}")
    return 0


def cmd_rollback(options: RollbackOptions, settings: StackSettings) -> int:
    from serving.publish import PublishError, rollback

    try:
        version = rollback(options.version, settings, keep_last=options.keep_last,
                           timeout_s=options.timeout)
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"policy v{version} is serving the weights of v{options.version}")
    return 0


def cmd_status(options: StatusOptions, settings: StackSettings) -> int:
    from serving.publish import serving_status

    status = serving_status(settings)
    if options.json:
        print(json.dumps(status, indent=2))
    else:
        error = f"  ERROR {status['triton_error']}" if "triton_error" in status else ""
        print(f"triton {status['triton']}{error}")
        for role, entries in sorted(status["roles"].items()):
            states = ", ".join(f"v{e.get('version', '?')} {e.get('state', '?')}" for e in entries)
            print(f"  {role:8} {states}")
        print(f"policy versions on disk: {status['policy_versions_on_disk']}")
        print(f"redis cai:policy:version = {status['redis_policy_version']}"
              + (f"  ERROR {status['redis_error']}" if "redis_error" in status else ""))
    ready = any(e.get("state") == "READY" for e in status["roles"].get("policy", []))
    return 0 if ready else 1


def cmd_repository(options: RepositoryOptions, settings: StackSettings,
                   models: ModelSettings) -> int:
    from serving.repository import render_repository

    extra = trainer_roles(RECIPES[options.recipe].trainer) if options.recipe else ()
    target = render_repository(options.directory, models, settings.cache_dir,
                               roles=ROLES + extra)
    print(f"rendered the model repository in {target}", flush=True)
    if options.action == "serve":
        import os

        from serving import triton_server

        backends = triton_server.build_backend_dir(triton_server.backend_dir(settings.cache_dir))
        argv = triton_server.command(target, backends, settings.triton_http_port,
                                     settings.triton_grpc_port, settings.triton_metrics_port,
                                     host=settings.host)
        os.execve(argv[0], argv, triton_server.server_env())  # Triton becomes this process
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add serving's subcommands to the `cai` parser."""
    state = {StackSettings: ("state_dir",)}
    add_command(sub, "publish", cmd_publish, options=PublishOptions, settings=state,
                help="serve a policy (or reward model) checkpoint as the next version",
                description="Validate CHECKPOINT (safetensors only), add it as <role>/<next>/, "
                "load it into Triton, then set Redis cai:<role>:version (role: policy unless "
                "--role reward). On failure the previous version keeps serving.")
    add_command(sub, "rollback", cmd_rollback, options=RollbackOptions, settings=state,
                help="serve an earlier policy version again",
                description="Re-publish the weights of a kept VERSION as a new version number.")
    add_command(sub, "serve-status", cmd_status, options=StatusOptions, settings=state,
                help="what Triton serves per role and the Redis policy pointer")
    add_command(sub, "repository", cmd_repository, options=RepositoryOptions,
                settings={StackSettings: (), ModelSettings: ("model", "device")},
                help="render the Triton model repository from settings (and serve it)",
                description="Write config.pbtxt and model.py for policy, critic, reviser and judge "
                "(and reward, when --recipe's trainer scores with it) into DIRECTORY, using "
                "CAI_MODEL / CAI_<ROLE>_MODEL and CAI_DEVICE; `serve` then runs tritonserver on "
                "it in the foreground (the docker-compose Triton service).")
