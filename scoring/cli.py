"""``cai eval``: harmlessness, non-evasiveness and over-refusal of a policy version, judge
agreement on labelled choices, a preference model's ranking of labelled conversations, and the
decline classifier's accuracy on hand labels."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from core.options import add_command, option
from core.settings import ModelSettings, StackSettings
from scoring.prompt_sets import BUILTIN
from streams.records import KINDS


@dataclass
class EvalOptions:
    builtin: str | None = option(None, f"a built-in set ({', '.join(BUILTIN)}); only its held-out "
                                       "split unless --all-prompts", exclusive="source")
    prompts: Path | None = option(None, "JSONL/CSV/txt prompt file", exclusive="source")
    kind: str = option("harmful", "kind of file prompts", choices=KINDS)
    all_prompts: bool = option(False, "use the whole built-in set")
    limit: int | None = option(None, "evaluate only the first N")
    version: int | None = option(None, "policy version from the model repository (default 1)")
    max_new_tokens: int = option(96, "tokens per answer")
    judge_file: Path | None = option(
        None, "labelled two-choice JSONL (prompt, corrects, incorrects)")
    preference_model: Path | None = option(
        None, "a preference model folder (the trainer's reward-models/round-N, or a Triton "
        "reward version's weights) to rank the labelled conversations of --preference-file")
    preference_file: Path | None = option(
        None, "conversations labelled harmful or ethical, like the paper's HarmfulVsEthical.jsonl")
    classifier_check: Path | None = option(
        None, "hand-labelled answers (answer, declined, explains_why)")
    report: Path | None = option(None, "write JSON (+ .md) here instead of printing")


def cmd_eval(options: EvalOptions, settings: StackSettings, models: ModelSettings) -> int:
    from scoring import evaluate, labels, prompt_sets, splits
    from scoring.report import markdown, write_report

    report: dict = {}
    if options.builtin or options.prompts:
        from serving.repository import policy_source

        items = (prompt_sets.builtin(options.builtin) if options.builtin
                 else prompt_sets.from_file(options.prompts, options.kind))
        if options.builtin and not options.all_prompts:
            items = splits.held_out_part(items)
        items = items[: options.limit] if options.limit else items
        harmful = [i.prompt for i in items if i.kind == "harmful"]
        benign = [i.prompt for i in items if i.kind == "helpful"]
        source = policy_source(settings, models, options.version)
        print(f"eval: policy {source}: {len(harmful)} harmful, {len(benign)} benign prompts",
              file=sys.stderr)
        report["policies"] = {f"v{options.version or 1}": evaluate.evaluate_policy(
            source, harmful, benign, options.max_new_tokens)}
    if options.judge_file:
        from serving.models import resolve

        judge = resolve(models.for_role("judge"), settings.cache_dir)
        items = evaluate.load_choice_file(options.judge_file)[: options.limit or None]
        report["judge_agreement"] = evaluate.judge_agreement(judge, items).as_dict()
    if bool(options.preference_model) != bool(options.preference_file):
        print("error: --preference-model and --preference-file go together", file=sys.stderr)
        return 2
    if options.preference_model:
        items = evaluate.load_choice_file(options.preference_file)[: options.limit or None]
        report["reward_agreement"] = evaluate.reward_agreement(str(options.preference_model), items)
    if options.classifier_check:
        report["classifier_accuracy"] = {
            k: v.as_dict() for k, v in labels.classifier_accuracy(options.classifier_check).items()}
    if not report:
        print("error: give --builtin/--prompts, --judge-file, --preference-model with "
              "--preference-file or --classifier-check",
              file=sys.stderr)
        return 2
    if options.report:
        write_report(report, options.report)
    else:
        print(markdown(report))
        print(json.dumps(report, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add scoring's command to the `cai` parser."""
    add_command(sub, "eval", cmd_eval, options=EvalOptions,
                settings={StackSettings: ("state_dir",), ModelSettings: ("model",)},
                help="harmlessness, non-evasiveness, over-refusal and judge agreement",
                description="Answers are generated greedily in-process by a policy version (or "
                "--model) and classified by the documented rule classifier "
                "(scoring/classify.py). Every figure has a 95% Wilson interval.")
