"""`cai run`: the main job, end to end, on one machine.

1. set up what is missing and start Kafka, Redis and Triton, loading only the roles the recipe
   calls (``recipe_roles``: its pipeline's, and the reward role when its trainer scores with it);
2. start the Faust worker, the trainer and the web dashboard as child processes (logs
   under the state folder), and print the dashboard's address;
3. run ``--rounds`` training rounds. Each round feeds fresh prompts from the training split
   (harmful and benign mixed), which the policy version serving at that moment answers; the
   trainer starts the round once the pipeline has drained, gates it on the dev split and, if it
   passes, publishes the new version before the next round's prompts go in. A live monitor shows
   the streams; a line per round says what happened;
   A supervisor (``stack/supervisor.py``) restarts a crashed worker or trainer with backoff,
   restarts a service that died or hangs, and restarts a worker whose lag stopped moving
   with nothing in flight (an alarm in the monitor);
4. evaluate every version that served, the first one included, on held-out prompts: harmless,
   explains-why, declined-then-complied and over-refusal, each with a 95% interval. Each
   version's evaluation starts once it is published, in a child process on CPU time the stack
   leaves idle (``cai/evaluations.py``); after the last round the worker and the trainer stop and
   what is left runs on both cores;
5. write the report (JSON, a Markdown copy and a PNG of the curve beside it) and stop what it
   started, unless ``--keep``.

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
from agents.strategies import recipe_roles
from cai import monitor
from cai import report as run_report
from cai.evaluations import Evaluations
from core.options import fraction, option
from core.recipes import DEFAULT_RECIPE, RECIPES, RUN_PROMPTS, pipeline_env, trainer_fields
from core.settings import ModelSettings, StackSettings
from scoring import evaluate, labels, splits
from stack import children, services, setup_machine
from stack.supervisor import Supervisor
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
    rounds: int = option(3, "training rounds at least; each feeds fresh prompts, which the "
                            "policy serving at that moment answers, and trains on them once they "
                            "are through")
    max_rounds: int = option(3, "rounds at most: after --rounds, another round starts while it "
                                "is expected to end within --more-rounds-within minutes (off by "
                                "default: measured, the default recipe's fourth and fifth "
                                "rounds over-refused on dev, docs/results-log.md)")
    more_rounds_within: float = option(
        25.0, "minutes from the start within which a round beyond --rounds must be expected to "
              "end (the last round's time, plus 15%), leaving time for the evaluation")
    prompts: int = option(RUN_PROMPTS, "training prompts fed per round")
    benign_share: float = option(0.5, "share of the fed prompts that are benign; the rest are "
                                      "red-team", type=fraction)
    contrast_benign: bool = option(False, "feed with each red-team prompt the benign prompt "
                                         "closest to it in wording, so that meaning, not "
                                         "wording, tells the two apart (off: a random draw; "
                                         "measured, it taught the decline's reason to benign "
                                         "answers, docs/results-log.md)")
    revisions: int = option(PipelineSettings.model_fields["rounds"].default,
                            "critique/revision rounds per prompt (recipes that revise)")
    recipe: str = option(DEFAULT_RECIPE, "how revisions and preference labels are made, and how "
                                         "the trainer learns from them ('paper' is the paper's "
                                         "critique-revise + judge). CAI_PIPELINE_* variables "
                                         "override single worker settings",
                         choices=sorted(RECIPES))
    duration: float = option(30.0, "minutes the rounds may take in all; the evaluation follows")
    eval_harmful: int = option(48, "held-out harmful prompts to evaluate each version on")
    eval_benign: int = option(48, "held-out benign prompts to evaluate each version on (for "
                                  "over-refusal)")
    eval_max_new_tokens: int = option(
        128, "tokens per evaluation answer: enough to see a decline that goes on to comply")
    report: Path = option(Path("reports/run.json"),
                          "JSON report; a Markdown copy and a PNG of the curve go beside it")
    keep: bool = option(False, "leave the stack, worker, trainer and dashboard running")
    dashboard: bool = option(True, "serve the web dashboard (`cai dashboard`) during the run")
    seed: int = option(0, "seeds the fed mix and the evaluation sample")
    trainer_overrides: dict[str, Any] = option(
        default_factory=dict, cli=False,
        help="TrainerConfig fields over the run's and the recipe's (set by code, e.g. tests)")


def trainer_config(options: RunOptions) -> TrainerConfig:
    """The trainer's config in this run: the recipe's round settings and fields
    (``core.recipes.trainer_fields``), the run's seed, then any overrides."""
    return TrainerConfig(**{**trainer_fields(options.recipe, options.prompts),
                            "seed": options.seed, **options.trainer_overrides})


def planned_rounds(options: RunOptions) -> int:
    """Rounds the fed mix is drawn for: --max-rounds, and never fewer than --rounds."""
    return max(options.rounds, options.max_rounds)


def training_mix(options: RunOptions) -> list[list]:
    """The prompts to feed, one list per round (``planned_rounds``): a seeded sample of the
    training split of the built-in sets, never the same prompt twice. With ``contrast_benign``
    a round's benign prompts are those closest in wording to its red-team ones
    (``scoring.contrast``)."""
    from scoring import prompt_sets
    from scoring.contrast import closest_in_form

    rng = random.Random(options.seed)
    harmful = [p for name in HARMFUL_SETS for p in splits.train_part(prompt_sets.builtin(name))]
    benign = splits.train_part(prompt_sets.builtin("benign"))
    n_benign = round(options.prompts * options.benign_share)
    n_harmful = options.prompts - n_benign
    rounds = planned_rounds(options)
    harmful = rng.sample(harmful, min(len(harmful), n_harmful * rounds))
    # Contrasting draws from the whole (shuffled) pool; a random draw takes what it feeds.
    drawn = len(benign) if options.contrast_benign else min(len(benign), n_benign * rounds)
    benign = rng.sample(benign, drawn)
    slices = []
    for r in range(rounds):
        reds = harmful[r * n_harmful:(r + 1) * n_harmful]
        if options.contrast_benign:
            greens = closest_in_form([p.prompt for p in reds], benign,
                                     min(n_benign, len(benign)))
            benign = [p for p in benign if p not in greens]
        else:
            greens = benign[r * n_benign:(r + 1) * n_benign]
        mix = reds + greens
        rng.shuffle(mix)
        slices.append(mix)
    return slices


def evaluation_sets(options: RunOptions) -> tuple[list[str], list[str]]:
    """Held-out prompts: a seeded sample of the harmful sets and of the benign set."""
    from scoring import prompt_sets

    rng = random.Random(options.seed + 1)
    harmful = [p.prompt for name in HARMFUL_SETS
               for p in splits.held_out_part(prompt_sets.builtin(name))]
    benign = [p.prompt for p in splits.held_out_part(prompt_sets.builtin("benign"))]
    return (rng.sample(harmful, min(options.eval_harmful, len(harmful))),
            rng.sample(benign, min(options.eval_benign, len(benign))))


def child_env(settings: StackSettings, options: RunOptions) -> dict[str, str]:
    """The worker's and trainer's environment: this stack and model, the recipe's worker
    settings."""
    return children.child_env(settings, options.model, options.revisions,
                              pipeline_env(options.recipe))


def start_children(settings: StackSettings, options: RunOptions,
                   stream: StreamSettings | None = None) -> Supervisor:
    """The worker, and the trainer with this run's config written beside its rounds; returns
    the supervisor that keeps them (and the services) running."""
    trainer_dir = settings.state_dir / "trainer"
    trainer_dir.mkdir(parents=True, exist_ok=True)
    config_file = trainer_config(options).save(trainer_dir)
    argvs = {"worker": children.worker_argv(), "trainer": children.trainer_argv(config_file)}
    env = child_env(settings, options)
    children.start(settings, argvs, env)
    return Supervisor(settings, stream or StreamSettings(kafka_bootstrap=settings.kafka_address),
                      argvs, env, models=ModelSettings(model=options.model),
                      roles=recipe_roles(options.recipe))


DASHBOARD_ADDRESS = "dashboard.url"


def start_dashboard(settings: StackSettings, options: RunOptions) -> str | None:
    """The dashboard as a child process (port CAI_DASHBOARD_PORT, or a free one when that is
    taken); returns its address, or None when it could not start (the run goes on)."""
    import urllib.request

    from cai.dashboard.server import DashboardSettings, free_or_other, url
    from stack.processes import ServiceError

    proc = children.child(settings, "dashboard")
    address_file = settings.state_dir / DASHBOARD_ADDRESS
    if proc.read_pid() is not None and address_file.exists():
        return address_file.read_text().strip()
    dashboard = DashboardSettings()
    port = free_or_other(dashboard.host, dashboard.port)
    address = url(dashboard.host, port)

    def answers() -> bool:
        try:
            with urllib.request.urlopen(address + "healthz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    argv = [*children.CAI, "dashboard", "--port", str(port), "--host", dashboard.host,
            "--report", str(options.report.resolve()),
            "--trainer-dir", str((settings.state_dir / "trainer").resolve())]
    try:
        proc.start(argv, healthy=answers, timeout_s=60, env=child_env(settings, options),
                   fix_hint=f"read {proc.log_file}, or run with --no-dashboard")
    except ServiceError as exc:
        logger.warning("the dashboard did not start; the run goes on without it: %s", exc)
        return None
    address_file.write_text(address)
    return address


def pipeline_done(snap: dict, fed: int, rounds_finished: int, rounds_wanted: int = 1) -> bool:
    """Every fed prompt reached sft, and the trainer has finished its rounds over all of it.

    The trainer commits offsets only after a round (promoted or rejected by its gate), so no
    lag means every record it read went through a finished round.
    """
    sft = snap["topics"]["sft"]
    trainer_lag = sft["lag"].get(topics.TRAINER_GROUP)
    prefs_lag = snap["topics"]["preferences"]["lag"].get(topics.TRAINER_GROUP, 0)
    return (sft["total"] >= fed and trainer_lag == 0 and prefs_lag == 0
            and rounds_finished >= rounds_wanted)


def trainer_rounds(settings: StackSettings) -> list[dict]:
    """Outcome, reasons and figures of every round the trainer finished."""
    return [checkpoint.round_summary(f)
            for f in checkpoint.finished_rounds(settings.state_dir / "trainer")]


def _rounds_done(settings: StackSettings) -> int:
    """Rounds the trainer has finished and committed (published and announced if promoted)."""
    return len(checkpoint.committed_rounds(settings.state_dir / "trainer"))


def watch(settings: StackSettings, stream: StreamSettings, until, deadline: float,
          live=None, supervisor: Supervisor | None = None, tick=None) -> dict:
    """Refresh the live monitor until ``until(snapshot)`` holds or the deadline passes. The
    supervisor restarts a child that died (with backoff) or stalled and heals the services;
    without one, a dead child ends the run with the place of its log. ``tick`` is called on
    every refresh (background work of the caller)."""
    snap = _snapshot(settings, stream)
    while time.monotonic() < deadline and (snap is None or not until(snap)):
        if tick is not None:
            tick()
        if supervisor is not None:
            supervisor.check()
        else:
            dead = children.dead(settings)
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited; see {settings.logs_dir}")
        time.sleep(3)
        snap = _snapshot(settings, stream) or snap
        if live is not None and snap is not None:
            live.update(monitor.render(snap))
    return snap if snap is not None else monitor.snapshot(settings, stream)


def _snapshot(settings: StackSettings, stream: StreamSettings) -> dict | None:
    """A monitor snapshot, or None while Kafka cannot be read (an outage the supervisor heals)."""
    try:
        return monitor.snapshot(settings, stream)
    except Exception as exc:  # noqa: BLE001 - any broker error: show the last one, try again
        logger.warning("cai run: cannot read the topics (%s); trying again", exc)
        return None


def round_line(summary: dict, total: int) -> str:
    """One progress line for a finished round."""
    outcome = checkpoint.round_outcome(summary)
    after = (summary.get("gate") or {}).get("after") or {}
    shown = ", ".join(f"{name.replace('_', '-')} {100 * after[name]['value']:.0f}%"
                      for name in evaluate.FIGURES
                      if after.get(name) and after[name]["value"] is not None)
    data = summary["metrics"]
    examples = int(data.get("data/sft_harmful", 0) + data.get("data/sft_helpful", 0)
                   + data.get("data/preferences", 0))
    return (f"cai run: round {summary['round']}/{total}: {outcome}; {examples} examples"
            + (f"; dev {shown}" if shown else ""))


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


def served_versions(rounds: list[dict]) -> list[int]:
    """The policy versions that served during the run: the first and every promoted round's."""
    return [1] + [r["version"] for r in rounds if r["promoted"] and r.get("version")]


def _rounds_text(options: RunOptions) -> str:
    """"3 rounds", or "3 to 5 rounds" when time may allow more."""
    most = planned_rounds(options)
    return (f"{options.rounds} rounds" if most == options.rounds
            else f"{options.rounds} to {most} rounds")


def another_round_fits(options: RunOptions, elapsed_s: float, last_round_s: float) -> bool:
    """Whether a round beyond --rounds is expected to end within --more-rounds-within minutes
    of the start: the next round is taken to last as long as the last one, plus 15% (later
    rounds replay a bounded number of earlier examples, so they grow little). Without a round
    timed (``last_round_s`` 0: a resumed run whose rounds all ran before), it is not known to
    fit, so it does not start."""
    return 0 < last_round_s and elapsed_s + 1.15 * last_round_s <= options.more_rounds_within * 60


def run_rounds(settings: StackSettings, stream: StreamSettings, options: RunOptions,
               deadline: float, supervisor: Supervisor | None = None,
               tick=None, started: float | None = None) -> tuple[dict, int]:
    """Feed each round's prompts once the previous round has finished: --rounds rounds, then
    more up to --max-rounds while ``another_round_fits``; return the last snapshot and how many
    prompts were fed. ``started``: the run's start (``time.monotonic``), default now.
    ``tick``: see ``watch``."""
    from rich.console import Console
    from rich.live import Live

    from agents import feed

    started = time.monotonic() if started is None else started
    slices, fed = training_mix(options), 0
    console = Console()
    snap = monitor.snapshot(settings, stream)
    last_round_s = 0.0
    with Live(monitor.render(snap), console=console, refresh_per_second=1,
              transient=False) as live:
        for number, prompts in enumerate(slices, 1):
            done_before = _rounds_done(settings)
            if done_before >= number:  # a resumed run: this round finished before
                fed += len(prompts)
                continue
            elapsed = time.monotonic() - started
            if number > options.rounds and not another_round_fits(options, elapsed,
                                                                  last_round_s):
                live.console.print(
                    f"cai run: no round {number}: no round has been timed since the resume, so "
                    "whether one more would end in time is not known" if not last_round_s else
                    f"cai run: no round {number}: at {elapsed / 60:.1f} min, one more "
                    f"({last_round_s / 60:.1f} min last time) would end past the "
                    f"{options.more_rounds_within:.0f}-minute mark (--more-rounds-within)")
                break
            round_started = time.monotonic()
            feed.publish(prompts, stream, progress=False)
            fed += len(prompts)
            live.console.print(
                f"cai run: round {number}/{len(slices)}: fed {len(prompts)} fresh prompts; policy "
                f"v{snap.get('serving_policy_version') or 1} answers them")
            snap = watch(settings, stream,
                         lambda s, n=number: _rounds_done(settings) >= n, deadline, live,
                         supervisor, tick)
            if _rounds_done(settings) < number:
                live.console.print(f"cai run: the {options.duration:.0f}-minute limit ran out in "
                                   f"round {number}; evaluating what is there")
                break
            last_round_s = time.monotonic() - round_started
            snap = monitor.snapshot(settings, stream)
            live.update(monitor.render(snap))
            live.console.print(round_line(trainer_rounds(settings)[number - 1], len(slices)))
    return snap, fed


def run(settings: StackSettings, options: RunOptions) -> dict:
    from serving.repository import policy_source
    from streams.admin import ensure_topics

    started = time.monotonic()
    claim_state(settings, options)
    models = ModelSettings(model=options.model)
    called = recipe_roles(options.recipe)
    print(f"cai run: model {options.model}, recipe {options.recipe} (roles {', '.join(called)}), "
          f"{_rounds_text(options)} of {options.prompts} prompts, up to "
          f"{options.duration:.0f} min", flush=True)
    setup_machine.run(settings, with_models=(options.model,))
    services.print_status(settings, services.up(settings, models, roles=called), as_json=False)
    stream = StreamSettings(kafka_bootstrap=settings.kafka_address)
    ensure_topics(stream)
    report: dict = {"model": options.model, "recipe": options.recipe, "roles": list(called),
                    "rounds": options.rounds, "max_rounds": planned_rounds(options),
                    "prompts_per_round": options.prompts,
                    "recipe_settings": pipeline_env(options.recipe),
                    "trainer_config": trainer_config(options).to_dict()}
    harmful, benign = evaluation_sets(options)
    evaluations = Evaluations(settings.state_dir / "evaluations", harmful, benign,
                              options.eval_max_new_tokens,
                              progress=lambda line: print(line, flush=True))

    queued_after = -1  # committed rounds when versions were last queued

    def evaluate_published() -> None:
        """Queue each version published so far for its held-out evaluation (the round
        summaries are read only when a round was committed since the last call)."""
        nonlocal queued_after
        done = _rounds_done(settings)
        if done != queued_after:
            for version in served_versions(trainer_rounds(settings)[:done]):
                evaluations.offer(version, policy_source(settings, models, version))
            queued_after = done
        evaluations.poll()

    try:
        supervisor = start_children(settings, options, stream)
        address = start_dashboard(settings, options) if options.dashboard else None
        if address:
            print(f"cai run: dashboard at {address}", flush=True)
        print(f"cai run: worker and trainer logs in {settings.logs_dir}", flush=True)
        snap, fed = run_rounds(settings, stream, options, started + options.duration * 60,
                               supervisor, tick=evaluate_published, started=started)
        supervisor.close()
        report["supervisor"] = {"restarts": supervisor.restarts(), "alarms": supervisor.events}
        report["trainer_rounds"] = trainer_rounds(settings)
        report["rounds"] = len(report["trainer_rounds"])  # run: --rounds, or more if time allowed
        report["pipeline_done"] = pipeline_done(snap, fed, len(report["trainer_rounds"]),
                                                options.rounds)
        report["stream_seconds"] = round(time.monotonic() - started, 1)
        report["monitor"] = {k: snap[k] for k in ("topics", "judge", "trainer", "targets",
                                                   "serving_policy_version")}
        report["example"] = snap["newest_example"]
        if not options.keep:
            children.stop(settings)  # free the CPU for evaluation
        versions = served_versions(report["trainer_rounds"])
        for version in versions:
            evaluations.offer(version, policy_source(settings, models, version))
        evaluated = evaluations.finish()
        report["policies"] = {}
        for version in versions:
            if evaluated.get(version) is None:  # its child failed: its log says why
                print(f"cai run: evaluating policy v{version} on {len(harmful)} held-out harmful "
                      f"and {len(benign)} held-out benign prompts", flush=True)
                evaluated[version] = evaluate.evaluate_policy(
                    policy_source(settings, models, version), harmful, benign,
                    options.eval_max_new_tokens)
            report["policies"][f"v{version}"] = evaluated[version]
        # The rules were written against the tuning labels; the held-out ones measure them fairly.
        report.update(labels.builtin_accuracy())
        report["total_seconds"] = round(time.monotonic() - started, 1)
        run_report.write(report, options.report)
    finally:
        evaluations.stop()
        if not options.keep:
            children.stop(settings)
            services.down(settings)
    return report
