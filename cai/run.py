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
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cai import evaluate, monitor, setup_machine, splits, stack
from cai.processes import ManagedProcess
from cai.recipes import DEFAULT_RECIPE, RECIPES, REFUSAL_GATE, pipeline_settings
from cai.settings import ModelSettings, StackSettings
from streams import topics
from streams.settings import StreamSettings
from trainer import checkpoint

logger = logging.getLogger(__name__)

HARMFUL_SETS = ("harmbench", "donotanswer", "advbench")
# Hand-labelled SmolLM2 answers (cai/data): the decline rules were written against the tuning
# files and never against the held-out ones.
TUNING_LABELS = ("decline_labels.jsonl", "decline_labels_grid.jsonl")
HELD_OUT_LABELS = ("decline_labels_heldout.jsonl", "decline_labels_grid_heldout.jsonl")


@dataclass
class RunOptions:
    model: str = "smollm2"
    prompts: int = 24
    benign_share: float = 0.5
    rounds: int = 2
    duration_s: float = 600.0
    eval_harmful: int = 32
    eval_benign: int = 16
    eval_max_new_tokens: int = 96
    report: Path = Path("reports/run.json")
    keep: bool = False
    seed: int = 0
    recipe: str = DEFAULT_RECIPE
    trainer_args: list[str] = field(default_factory=list)


def trainer_argv(options: RunOptions) -> list[str]:
    """The ``cai trainer`` arguments of this run."""
    # One round should see both kinds of example, as the strategy grid trains them: every prompt
    # gives about one SFT record and one preference pair. Rounds made of one kind alone were
    # lopsided (SFT-only rounds taught refusing; pair-only rounds were rejected by the probe).
    # The probe keeps one example per record type and prompt kind (up to 4) out of training.
    # The compare stage drops a helpful prompt's pair when its toward answer refuses, so the count
    # can fall short of this; the 240 s timer then closes the round, and later examples go to the next.
    every = max(4, 2 * options.prompts - 4)
    return ["--round-every-examples", str(every), "--round-every-seconds", "240",
            # The probe holds the first examples of each type and prompt kind:
            # keep it small so that a short run still has data to train on.
            "--probe-size", "1",
            *REFUSAL_GATE,
            # Versions change every few minutes in a short run: keep older data.
            "--staleness-policy", "downweight", *RECIPES[options.recipe].trainer,
            *options.trainer_args]


def refusal_probe_prompts(options: RunOptions) -> set[str]:
    """The benign prompts the trainer's refusal probe answers, read from the trainer's own
    arguments; they are never fed, so the probe measures how the policy treats benign prompts it
    was not trained on."""
    import argparse

    from trainer.cli import add_arguments, build_config
    from trainer.refusal import load_refusal_prompts

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return set(load_refusal_prompts(build_config(parser.parse_args(trainer_argv(options)))))


def training_mix(options: RunOptions):
    """The prompts to feed: a seeded sample of the training split of the built-in sets."""
    from agents import prompt_sets

    rng = random.Random(options.seed)
    harmful = [p for name in HARMFUL_SETS for p in splits.train_part(prompt_sets.builtin(name))]
    reserved = refusal_probe_prompts(options)
    benign = [p for p in splits.train_part(prompt_sets.builtin("benign")) if p.prompt not in reserved]
    n_benign = min(len(benign), round(options.prompts * options.benign_share))
    n_harmful = options.prompts - n_benign
    mix = rng.sample(harmful, n_harmful) + rng.sample(benign, n_benign)
    rng.shuffle(mix)
    return mix


def evaluation_sets(options: RunOptions) -> tuple[list[str], list[str]]:
    from agents import prompt_sets

    rng = random.Random(options.seed + 1)
    harmful = [p.prompt for name in HARMFUL_SETS for p in splits.held_out_part(prompt_sets.builtin(name))]
    benign = [p.prompt for p in splits.held_out_part(prompt_sets.builtin("benign"))]
    return (rng.sample(harmful, min(options.eval_harmful, len(harmful))),
            benign[: options.eval_benign])


def _child(settings: StackSettings, name: str) -> ManagedProcess:
    return ManagedProcess(name, settings.state_dir / "pids" / f"{name}.pid",
                          settings.logs_dir / f"{name}.log")


def _child_env(settings: StackSettings, options: RunOptions) -> dict[str, str]:
    env = dict(os.environ)
    env["CAI_STATE_DIR"] = str(settings.state_dir)
    env["CAI_MODEL"] = options.model
    env["CAI_PIPELINE_ROUNDS"] = str(options.rounds)
    env["CAI_PIPELINE_DATA_DIR"] = str(settings.state_dir / "faust")
    env.update(pipeline_settings(options.recipe))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def start_children(settings: StackSettings, options: RunOptions,
                   names: tuple[str, ...] = ("worker", "trainer")) -> None:
    cai = [sys.executable, "-m", "cai.cli"]
    env = _child_env(settings, options)
    argvs = {
        "worker": cai + ["worker", "--worker-id", "run-worker"],
        "trainer": cai + ["trainer", *trainer_argv(options)],
    }
    for name in names:
        argv = argvs[name]
        proc = _child(settings, name)
        if proc.read_pid() is not None:
            continue
        proc.start(argv, healthy=lambda: True, timeout_s=5, env=env,
                   fix_hint=f"read {proc.log_file}")


def stop_children(settings: StackSettings) -> None:
    for name in ("worker", "trainer"):
        _child(settings, name).stop(grace_s=30)


def _dead_children(settings: StackSettings) -> list[str]:
    return [n for n in ("worker", "trainer") if _child(settings, n).read_pid() is None]


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
    return [checkpoint.round_summary(f) for f in checkpoint.finished_rounds(settings.state_dir / "trainer")]


def policy_source(settings: StackSettings, models: ModelSettings, version: int | None) -> str:
    from serving.models import resolve
    from serving.repository import read_version_source

    if version is None or version <= 1:
        return resolve(models.for_role("policy"), settings.cache_dir)
    return read_version_source(settings.triton_repository / "policy" / str(version))


def watch(settings: StackSettings, stream: StreamSettings, fed: int, deadline: float) -> dict:
    from rich.console import Console
    from rich.live import Live

    console = Console()
    snap = monitor.snapshot(settings, stream)
    with Live(monitor.render(snap), console=console, refresh_per_second=1, transient=False) as live:
        # Counting the round folders is enough here; their summaries are read once, for the report.
        while time.monotonic() < deadline and not pipeline_done(
                snap, fed, len(checkpoint.finished_rounds(settings.state_dir / "trainer"))):
            dead = _dead_children(settings)
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
    from streams.admin import ensure_topics

    started = time.monotonic()
    claim_state(settings, options)
    models = ModelSettings(model=options.model)
    print(f"cai run: model {options.model}, {options.prompts} prompts, {options.rounds} revision "
          f"rounds, up to {options.duration_s / 60:.0f} min of streaming", flush=True)
    setup_machine.run(settings, with_models=(options.model,))
    stack.print_status(settings, stack.up(settings, models), as_json=False)
    stream = StreamSettings(kafka_bootstrap=settings.kafka_address)
    ensure_topics(stream)
    report: dict = {"model": options.model, "prompts": options.prompts, "rounds": options.rounds,
                    "recipe": options.recipe, "recipe_settings": pipeline_settings(options.recipe)}
    try:
        start_children(settings, options)
        mix = training_mix(options)
        feed.publish(mix, stream, progress=False)
        print(f"cai run: fed {len(mix)} prompts; worker and trainer logs in {settings.logs_dir}",
              flush=True)
        snap = watch(settings, stream, len(mix), started + options.duration_s)
        report["trainer_rounds"] = trainer_rounds(settings)
        report["pipeline_done"] = pipeline_done(snap, len(mix), len(report["trainer_rounds"]))
        report["stream_seconds"] = round(time.monotonic() - started, 1)
        report["monitor"] = {k: snap[k] for k in ("topics", "judge", "trainer", "serving_policy_version")}
        report["example"] = snap["newest_example"]
        if not options.keep:
            stop_children(settings)  # free the CPU for evaluation
        last = report["monitor"]["serving_policy_version"] or 1
        harmful, benign = evaluation_sets(options)
        print(f"cai run: evaluating policy v1 against v{last} on {len(harmful)} held-out harmful and "
              f"{len(benign)} held-out benign prompts", flush=True)
        report["policies"] = {
            f"v{v}": evaluate.evaluate_policy(policy_source(settings, models, v), harmful, benign,
                                              options.eval_max_new_tokens)
            for v in sorted({1, last})
        }
        # The rules were written against the tuning files; the held-out files measure them fairly.
        data = Path(__file__).with_name("data")
        for key, names in (("classifier_accuracy", HELD_OUT_LABELS),
                           ("classifier_accuracy_tuning_set", TUNING_LABELS)):
            accuracy = evaluate.classifier_accuracy(*(data / n for n in names))
            report[key] = {k: share.as_dict() for k, share in accuracy.items()}
        report["total_seconds"] = round(time.monotonic() - started, 1)
        write_report(report, options.report)
    finally:
        if not options.keep:
            stop_children(settings)
            stack.down(settings)
    return report


def write_report(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    path.with_suffix(".md").write_text(evaluate.markdown(report))
    print(evaluate.markdown(report))
    print(f"report: {path} and {path.with_suffix('.md')}")
