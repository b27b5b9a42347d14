"""Serving subcommands: ``cai publish CHECKPOINT``, ``cai rollback VERSION``, ``cai serve-status``.

They act on the running stack described by ``StackSettings`` (env ``CAI_*``, or
``--state-dir``): the Triton model repository, Triton's HTTP endpoint and Redis.
"""

from __future__ import annotations

import argparse
import json
import sys


def _settings(args: argparse.Namespace):
    from cai.settings import StackSettings

    return StackSettings(**({"state_dir": args.state_dir} if args.state_dir else {}))


def cmd_publish(args: argparse.Namespace) -> int:
    from serving.publish import PublishError, publish_policy

    try:
        version = publish_policy(args.checkpoint, _settings(args), keep_last=args.keep_last,
                                 timeout_s=args.timeout)
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"policy v{version} is serving {args.checkpoint}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from serving.publish import PublishError, rollback

    try:
        version = rollback(args.version, _settings(args), keep_last=args.keep_last, timeout_s=args.timeout)
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"policy v{version} is serving the weights of v{args.version}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from serving.publish import serving_status

    status = serving_status(_settings(args))
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(f"triton {status['triton']}" + (f"  ERROR {status['triton_error']}" if "triton_error" in status else ""))
        for role, entries in sorted(status["roles"].items()):
            states = ", ".join(f"v{e.get('version', '?')} {e.get('state', '?')}" for e in entries)
            print(f"  {role:8} {states}")
        print(f"policy versions on disk: {status['policy_versions_on_disk']}")
        print(f"redis cai:policy:version = {status['redis_policy_version']}"
              + (f"  ERROR {status['redis_error']}" if "redis_error" in status else ""))
    ready = any(e.get("state") == "READY" for e in status["roles"].get("policy", []))
    return 0 if ready else 1


def register(sub: argparse._SubParsersAction) -> None:
    """Add serving's subcommands to the `cai` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", help="stack state folder (default .cai, env CAI_STATE_DIR)")
    common.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the load")
    common.add_argument("--keep-last", type=int, default=3,
                        help="published policy versions to keep on disk (default 3; v1 is always kept)")

    p = sub.add_parser("publish", parents=[common], help="serve a policy checkpoint as the next version",
                       description="Validate CHECKPOINT (safetensors only), add it as policy/<next>/, "
                       "load it into Triton, then set Redis cai:policy:version. On failure the "
                       "previous version keeps serving.")
    p.add_argument("checkpoint", help="folder written by save_pretrained (config.json, *.safetensors)")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("rollback", parents=[common], help="serve an earlier policy version again",
                       description="Re-publish the weights of a kept VERSION as a new version number.")
    p.add_argument("version", type=int, help="a policy version still on disk (see serve-status)")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("serve-status", help="what Triton serves per role and the Redis policy pointer")
    p.add_argument("--state-dir", help="stack state folder (default .cai, env CAI_STATE_DIR)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)
