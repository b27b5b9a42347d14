"""`cai run`: the main job, end to end, on one machine.

1. set up what is missing and start Kafka, Redis and Triton (models from ``--model``);
2. start the Faust worker and the trainer as child processes (logs under the state folder);
3. feed a built-in mix of harmful and benign *training* prompts (the held-out split is kept
   for evaluation);
4. show the live monitor until every prompt has been revised, judged and trained on, or the
   ``--duration`` runs out;
5. evaluate the first policy version against the last on held-out prompts and write the report
   (JSON, with a Markdown copy beside it);
6. stop what it started, unless ``--keep``.

Prompt ids are content hashes and every stage is idempotent, so a run started again after
Ctrl-C or a crash resumes: fed prompts are not processed twice, the trainer continues from its
last checkpoint.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.settings import PipelineSettings
from cai import monitor
from cai import report as run_report
from core.options import fraction, option
from core.recipes import DEFAULT_RECIPE, RECIPES, RUN_PROMPTS, pipeline_env, trainer_fields
from core.settings import ModelSettings, StackSettings
from scoring import evaluate, labels, splits
from stack import children, services, setup_machine
from streams import topics
from streams.settings import StreamSettings
from trainer import checkpoint
from trainer.config import TrainerConfig

logger = logging.getLogger(__name__)

HARMFUL_SETS = ("harmbench", "donotanswer", "advbench")


@dataclass
class RunOptions:
    model: str = option(default_factory=lambda: ModelSettings().model,
                        help="smollm2, tiny, a folder or a hub id (env CAI_MODEL)")
    prompts: int = option(RUN_PROMPTS, "training prompts to feed")
    benign_share: float = option(0.5, "share of the fed prompts that are benign; the rest are "
                                      "red-team", type=fraction)
    rounds: int = option(PipelineSettings.model_fields["rounds"].default,
                         "critique/revision rounds per prompt")
    recipe: str = option(DEFAULT_RECIPE, "how revisions and preference labels are made (the best "
                                         "in docs/results-log.md; 'paper' is critique-revise + "
                                         "judge). CAI_PIPELINE_* variables override single "
                                         "settings", choices=sorted(RECIPES))
    duration: float = option(10.0, "minutes of streaming before evaluation starts")
    eval_harmful: int = option(32, "held-out harmful prompts to evaluate")
    eval_benign: int = option(16, "held-out benign prompts to evaluate")
    eval_max_new_tokens: int = option(96, "tokens per evaluation answer", cli=False)
    report: Path = option(Path("reports/run.json"),
                          "JSON report; a Markdown copy is written beside it")
    keep: bool = option(False, "leave the stack, worker and trainer running")
    seed: int = option(0, "seeds the fed mix and the evaluation sample")
    trainer_overrides: dict[str, Any] = option(
        default_factory=dict, cli=False,
        help="TrainerConfig fields over the run's and the recipe's (set by code, e.g. tests)")


def trainer_config(options: RunOptions) -> TrainerConfig:
    """The trainer's config in this run: the run's round settings, the refusal gate, the
    recipe's fields (``core.recipes.trainer_fields``), then any overrides."""
    return TrainerConfig(**{**trainer_fields(options.recipe, options.prompts),
                            **options.trainer_overrides})


def refusal_probe_prompts(options: RunOptions) -> set[str]:
    """The benign prompts the trainer's refusal probe answers, read from the trainer's own
    config; they are never fed, so the probe measures how the policy treats benign prompts it
    was not trained on."""
    from trainer.refusal import load_refusal_prompts

    return set(load_refusal_prompts(trainer_config(options)))


def training_mix(options: RunOptions):
    """The prompts to feed: a seeded sample of the training split of the built-in sets."""
    from scoring import prompt_sets

    rng = random.Random(options.seed)
    harmful = [p for name in HARMFUL_SETS for p in splits.train_part(prompt_sets.builtin(name))]
    reserved = refusal_probe_prompts(options)
    benign = [p for p in splits.train_part(prompt_sets.builtin("benign"))
              if p.prompt not in reserved]
    n_benign = min(len(benign), round(options.prompts * options.benign_share))
    n_harmful = options.prompts - n_benign
    mix = rng.sample(harmful, n_harmful) + rng.sample(benign, n_benign)
    rng.shuffle(mix)
    return mix


def evaluation_sets(options: RunOptions) -> tuple[list[str], list[str]]:
    from scoring import prompt_sets

    rng = random.Random(options.seed + 1)
    harmful = [p.prompt for name in HARMFUL_SETS
               for p in splits.held_out_part(prompt_sets.builtin(name))]
    benign = [p.prompt for p in splits.held_out_part(prompt_sets.builtin("benign"))]
    return (rng.sample(harmful, min(options.eval_harmful, len(harmful))),
            benign[: options.eval_benign])


def child_env(settings: StackSettings, options: RunOptions) -> dict[str, str]:
    """The worker's and trainer's environment: this stack and model, the recipe's worker
    settings."""
    return children.child_env(settings, options.model, options.rounds,
                              pipeline_env(options.recipe))


def start_children(settings: StackSettings, options: RunOptions) -> None:
    """The worker, and the trainer with this run's config written beside its rounds."""
    trainer_dir = settings.state_dir / "trainer"
    trainer_dir.mkdir(parents=True, exist_ok=True)
    config_file = trainer_config(options).save(trainer_dir)
    children.start(settings, {"worker": children.worker_argv(),
                              "trainer": children.trainer_argv(config_file)},
                   child_env(settings, options))


def pipeline_done(snap: dict, fed: int, rounds_finished: int) -> bool:
    """Every fed prompt reached sft, and the trainer has finished rounds over all of it.

    The trainer commits offsets only after a round (promoted or rejected by its gate), so no
    lag means every record it read went through a finished round.
    """
    sft = snap["topics"]["sft"]
    trainer_lag = sft["lag"].get(topics.TRAINER_GROUP)
    prefs_lag = snap["topics"]["preferences"]["lag"].get(topics.TRAINER_GROUP, 0)
    return sft["total"] >= fed and trainer_lag == 0 and prefs_lag == 0 and rounds_finished >= 1


def trainer_rounds(settings: StackSettings) -> list[dict]:
    """Outcome, reasons and figures of every round the trainer finished."""
    return [checkpoint.round_summary(f)
            for f in checkpoint.finished_rounds(settings.state_dir / "trainer")]


def watch(settings: StackSettings, stream: StreamSettings, fed: int, deadline: float) -> dict:
    from rich.console import Console
    from rich.live import Live

    console = Console()
    snap = monitor.snapshot(settings, stream)
    with Live(monitor.render(snap), console=console, refresh_per_second=1, transient=False) as live:
        # Counting the round folders is enough here; their summaries are read once, for the report.
        while time.monotonic() < deadline and not pipeline_done(
                snap, fed, len(checkpoint.finished_rounds(settings.state_dir / "trainer"))):
            dead = children.dead(settings)
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited; see {settings.logs_dir}")
            time.sleep(3)
            snap = monitor.snapshot(settings, stream)
            live.update(monitor.render(snap))
    return snap


class RunStateMismatch(ValueError):
    """The state folder holds a run of another model or recipe; resuming would mix the two."""


RUN_MANIFEST = "run.json"


def claim_state(settings: StackSettings, options: RunOptions) -> None:
    """Record which model and recipe this state folder's run uses, or refuse a different one.

    A resumed run reuses the trainer's checkpoints and the fed prompts; with another model or
    recipe it would evaluate one model on rounds trained from another.
    """
    path = settings.state_dir / RUN_MANIFEST
    mine = {"model": options.model, "recipe": options.recipe}
    if path.exists():
        theirs = json.loads(path.read_text())
        differ = {k: theirs.get(k) for k in mine if theirs.get(k) != mine[k]}
        if differ:
            held = ", ".join(f"{k} {v!r}" for k, v in differ.items())
            asked = ", ".join(f"{k} {mine[k]!r}" for k in differ)
            raise RunStateMismatch(
                f"the state folder {settings.state_dir} holds a run with {held}, not {asked}; "
                f"resuming it would mix the two. Fix: give a new --state-dir, or run "
                f"`cai stack down --state-dir {settings.state_dir}` and delete that folder")
        return
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(mine))


def run(settings: StackSettings, options: RunOptions) -> dict:
    from agents import feed
    from serving.repository import policy_source
    from streams.admin import ensure_topics

    started = time.monotonic()
    claim_state(settings, options)
    models = ModelSettings(model=options.model)
    print(f"cai run: model {options.model}, {options.prompts} prompts, {options.rounds} revision "
          f"rounds, up to {options.duration:.0f} min of streaming", flush=True)
    setup_machine.run(settings, with_models=(options.model,))
    services.print_status(settings, services.up(settings, models), as_json=False)
    stream = StreamSettings(kafka_bootstrap=settings.kafka_address)
    ensure_topics(stream)
    report: dict = {"model": options.model, "prompts": options.prompts, "rounds": options.rounds,
                    "recipe": options.recipe, "recipe_settings": pipeline_env(options.recipe)}
    try:
        start_children(settings, options)
        mix = training_mix(options)
        feed.publish(mix, stream, progress=False)
        print(f"cai run: fed {len(mix)} prompts; worker and trainer logs in {settings.logs_dir}",
              flush=True)
        snap = watch(settings, stream, len(mix), started + options.duration * 60)
        report["trainer_rounds"] = trainer_rounds(settings)
        report["pipeline_done"] = pipeline_done(snap, len(mix), len(report["trainer_rounds"]))
        report["stream_seconds"] = round(time.monotonic() - started, 1)
        report["monitor"] = {k: snap[k] for k in ("topics", "judge", "trainer",
                                                   "serving_policy_version")}
        report["example"] = snap["newest_example"]
        if not options.keep:
            children.stop(settings)  # free the CPU for evaluation
        last = report["monitor"]["serving_policy_version"] or 1
        harmful, benign = evaluation_sets(options)
        print(f"cai run: evaluating policy v1 against v{last} on {len(harmful)} held-out harmful "
              f"and {len(benign)} held-out benign prompts", flush=True)
        report["policies"] = {
            f"v{v}": evaluate.evaluate_policy(policy_source(settings, models, v), harmful, benign,
                                              options.eval_max_new_tokens)
            for v in sorted({1, last})
        }
        # The rules were written against the tuning labels; the held-out ones measure them fairly.
        report.update(labels.builtin_accuracy())
        report["total_seconds"] = round(time.monotonic() - started, 1)
        run_report.write(report, options.report)
    finally:
        if not options.keep:
            children.stop(settings)
            services.down(settings)
    return report
