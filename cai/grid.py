"""`cai grid`: compare revision x preference strategies on the same prompts, budget and seed.

Each grid cell is ``REVISION+PREFERENCE`` (``critique-revise+judge``, ``context+none``,
``none+contrastive`` ...; docs/strategies.md). For every cell, starting from the same base policy:

1. the training prompts (the training split of the built-in sets, harmful and benign mixed, as
   ``cai run`` picks them) go through the pipeline's own stage functions (agents/policy.py,
   critique.py, revise.py, compare.py, which call agents/strategies.py) in-process, with the
   models run by ``serving.textgen`` instead of Triton and no Kafka; records are encoded and
   decoded on every hop, exactly as on the wire;
2. the trainer's round (trainer/rounds.py on trainer/steps.py: LoRA SFT, then soft DPO) trains
   on the resulting SFT and preference records with a fixed number of optimizer steps per kind,
   the same for every cell; examples are cycled (seeded) to fill the steps;
3. with ``--iterations`` > 1 the prompts are split across iterations and each new policy
   version answers, and makes context and contrast answers for, the next iteration's prompts;
4. the final policy is evaluated with ``cai.evaluate.evaluate_policy`` on held-out prompts
   (``cai.splits``) that no cell trained on.

The table (Markdown + JSON) gives harmlessness, explains-why and over-refusal with 95% Wilson
intervals, and per cell the CPU minutes: ``time.process_time()`` of this process (user + system
time of all its threads) around the cell's generation, training and evaluation; the grid starts
no child processes. Results are written after every cell; ``--resume`` keeps the rows of a
previous run whose options match (the untrained rows depend only on the model and evaluation).

Example (small budget, SmolLM2, 2 cores)::

    cai grid --model smollm2 --cells context+none none+contrastive --context-placement user-suffix
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from streams.records import PREFERENCE_STRATEGIES, REVISION_STRATEGIES

logger = logging.getLogger(__name__)

DEFAULT_CELLS = ("critique-revise+judge", "direct+revision-over-initial", "context+none",
                 "context+revision-over-initial", "none+contrastive")


class GridError(ValueError):
    """An unusable grid option; the message names it and the fix."""


@dataclass(frozen=True)
class Cell:
    revision: str      # a revision strategy or "none" (no SFT)
    preference: str    # a preference strategy or "none" (no DPO)

    @property
    def name(self) -> str:
        return f"{self.revision}+{self.preference}"

    @classmethod
    def parse(cls, text: str) -> Cell:
        revision, sep, preference = text.partition("+")
        if not sep:
            raise GridError(f"cell {text!r}: write REVISION+PREFERENCE, e.g. context+none")
        if revision not in (*REVISION_STRATEGIES, "none"):
            raise GridError(f"cell {text!r}: revision {revision!r} is not one of "
                            f"{', '.join((*REVISION_STRATEGIES, 'none'))}")
        if preference not in (*PREFERENCE_STRATEGIES, "none"):
            raise GridError(f"cell {text!r}: preference {preference!r} is not one of "
                            f"{', '.join((*PREFERENCE_STRATEGIES, 'none'))}")
        if revision == "none" and preference in ("judge", "revision-over-initial"):
            raise GridError(f"cell {text!r}: {preference} labels (initial, revision) pairs and needs a "
                            "revision strategy; use contrastive with revision 'none'")
        if revision == "none" and preference == "none":
            raise GridError(f"cell {text!r} trains nothing; the untrained policy is the 'baseline' row")
        return cls(revision, preference)


@dataclass
class GridOptions:
    model: str = "smollm2"
    cells: list[str] = field(default_factory=lambda: list(DEFAULT_CELLS))
    prompts: int = 48                 # training prompts in all, split across iterations
    benign_share: float = 0.25
    iterations: int = 1
    rounds: int = 1                   # critique/revision rounds per chain
    max_new_tokens: int = 64          # policy, critique and revision answers while making data
    gen_batch: int = 8                # records per stage call
    batch_size: int = 4               # training examples (pairs) per optimizer step
    sft_steps: int | None = None      # per iteration; default: one pass over the prompts
    dpo_steps: int | None = None
    lr: float = 2e-4
    beta: float = 0.1
    max_length: int = 256
    contrastive_label: str = "construction"
    context_placement: str = "system"  # or "user-suffix" (agents/settings.py)
    context_temperature: float | None = None  # default: the policy's temperature
    context_opening: bool = False     # context answers to red-team prompts start with decline_opening
    eval_harmful: int = 40
    eval_benign: int = 16
    eval_max_new_tokens: int = 64
    baseline: bool = True             # evaluate the untrained policy
    teacher: bool = True              # evaluate it with the constitution as system prompt
    seed: int = 0
    output: Path = Path("reports/grid.json")
    resume: bool = False
    threads: int | None = None

    def check(self) -> list[Cell]:
        cells = [Cell.parse(c) for c in self.cells]
        if len({c.name for c in cells}) != len(cells):
            raise GridError("cells: a cell is listed twice; list each once")
        for name in ("prompts", "iterations", "rounds", "max_new_tokens", "gen_batch", "batch_size",
                     "eval_max_new_tokens"):
            if getattr(self, name) < 1:
                raise GridError(f"{name}={getattr(self, name)} must be at least 1")
        if self.prompts < self.iterations:
            raise GridError(f"prompts={self.prompts} cannot be split over iterations={self.iterations}")
        if self.contrastive_label not in ("construction", "judge"):
            raise GridError("contrastive_label must be 'construction' or 'judge'")
        if self.context_placement not in ("system", "user-suffix"):
            raise GridError("context_placement must be 'system' or 'user-suffix'")
        return cells

    def steps(self) -> tuple[int, int]:
        """(SFT steps, DPO steps) per iteration: every cell gets the same."""
        default = math.ceil(self.prompts / self.iterations / self.batch_size)
        return (self.sft_steps if self.sft_steps is not None else default,
                self.dpo_steps if self.dpo_steps is not None else default)

    def key(self) -> dict:
        """The options that decide a cell's result (resume only reuses matching cells)."""
        data = json.loads(json.dumps(asdict(self), default=str))
        for name in ("cells", "output", "resume", "threads", "baseline", "teacher"):
            data.pop(name)
        return data

    def reference_key(self) -> dict:
        """The options that decide an untrained row's result: the model and the evaluation."""
        return {name: getattr(self, name) for name in ("model", "eval_harmful", "eval_benign",
                                                       "eval_max_new_tokens", "seed")}


# ---- models in-process ----------------------------------------------------------------------------

class LocalInference:
    """The pipeline's ``Inference`` on in-process ``serving.textgen`` models instead of Triton.

    Critic, reviser and judge stay the base model; the policy role serves whatever
    ``set_policy`` last installed, with a version number like Triton's.
    """

    ROLES = ("policy", "critic", "reviser", "judge")

    def __init__(self, base_source: str, threads: int | None = None) -> None:
        self.threads = threads
        self.sources = {role: base_source for role in self.ROLES}
        self.versions = {role: 1 for role in self.ROLES}
        self._loaded: dict[str, Any] = {}
        self.tokens = 0

    def set_policy(self, source: str, version: int) -> None:
        self.sources["policy"], self.versions["policy"] = str(source), version
        for stale in set(self._loaded) - set(self.sources.values()):
            del self._loaded[stale]

    def generator(self, role: str):
        from serving.textgen import TextGenerator

        source = self.sources[role]
        if source not in self._loaded:
            self._loaded[source] = TextGenerator(source, threads=self.threads)
        return self._loaded[source]

    async def generate(self, role: str, items: list[tuple[str, int]], params) -> list[list[Any]]:
        from serving.client import Generation
        from serving.textgen import GenRequest

        requests = [GenRequest(prompt=text, max_new_tokens=params.max_new_tokens, temperature=params.temperature,
                               top_p=params.top_p, seed=seed, stop=tuple(params.stop),
                               num_samples=params.num_samples, chat=params.chat, system=params.system,
                               response_prefix=params.response_prefix)
                    for text, seed in items]
        results = self.generator(role).generate(requests)
        self.tokens += sum(s.completion_tokens for samples in results for s in samples)
        return [[Generation(text=s.text, prompt_tokens=s.prompt_tokens, completion_tokens=s.completion_tokens,
                            model_version=self.versions[role], logprob_sum=s.logprob_sum,
                            finish_reason=s.finish_reason) for s in samples] for samples in results]

    async def judge(self, prompts: list[str], choices: list[str], cot: bool, seed: int | None) -> list[Any]:
        from serving.client import JudgeResult
        from serving.textgen import JudgeRequest

        outputs = self.generator("judge").judge([
            JudgeRequest(prompt=p, choices=tuple(choices), cot=cot, chat=False, seed=seed) for p in prompts])
        return [JudgeResult(probs=o.probs, model_version=self.versions["judge"], reasoning=o.reasoning,
                            logprobs=o.logprobs) for o in outputs]


# ---- one cell -------------------------------------------------------------------------------------

def pipeline_settings(cell: Cell, options: GridOptions):
    """The PipelineSettings an agent worker would run this cell with."""
    from agents.settings import PipelineSettings

    return PipelineSettings(
        strategy=cell.revision if cell.revision != "none" else "critique-revise",
        preference=cell.preference if cell.preference != "none" else "judge",
        compare="none" if cell.preference == "none" else "initial-vs-final",
        contrastive_label=options.contrastive_label, context_placement=options.context_placement,
        context_temperature=options.context_temperature, context_opening=options.context_opening,
        rounds=options.rounds, seed=options.seed,
        policy_max_new_tokens=options.max_new_tokens, critique_max_new_tokens=options.max_new_tokens,
        revision_max_new_tokens=options.max_new_tokens, redis_url="unused://", triton_grpc="unused")


async def make_data(svc, prompts, keep_chains: bool, progress=None) -> tuple[list, list]:
    """Run prompts through the stage functions; returns (SFT records, preference records).

    Outputs go to the next stage's ``process`` as they would through Kafka (encoded, decoded).
    With ``keep_chains`` False the revision chains are not run (a cell with no revision strategy).
    """
    from agents import compare, critique, policy, revise
    from streams import topics
    from streams.records import PromptRecord, decode, encode, now

    stages = {topics.PROMPTS: policy, topics.CRITIQUE: critique, topics.REVISE: revise, topics.COMPARE: compare}
    queues: dict[str, list] = {t: [] for t in stages}
    queues[topics.PROMPTS] = [PromptRecord(prompt_id=p.prompt_id, prompt=p.prompt, kind=p.kind, source=p.source,
                                           created_at=now()) for p in prompts]
    out: dict[str, list] = {topics.SFT: [], topics.PREFERENCES: []}
    batch = svc.settings.batch_size
    while any(queues.values()):
        for topic, stage in stages.items():
            records, queues[topic] = queues[topic], []
            for start in range(0, len(records), batch):
                chunk = records[start:start + batch]
                for outputs in await stage.process(svc, chunk):
                    for o in outputs:
                        record = decode(type(o.record), encode(o.record))
                        if o.topic in out:
                            if o.topic == topics.SFT and not keep_chains:
                                continue
                            out[o.topic].append(record)
                        elif o.topic in queues and (keep_chains or o.topic == topics.COMPARE):
                            queues[o.topic].append(record)
                if progress:
                    progress(f"{stage.NAME} {min(start + batch, len(records))}/{len(records)}")
    return out[topics.SFT], out[topics.PREFERENCES]


def fill(examples: list, count: int, rng: random.Random) -> list:
    """Exactly ``count`` examples: seeded shuffles of ``examples`` cycled (empty stays empty)."""
    if not examples or count <= 0:
        return []
    picked: list = []
    while len(picked) < count:
        order = examples[:]
        rng.shuffle(order)
        picked += order
    return picked[:count]


def _prompt_slices(prompts: list, iterations: int) -> list[list]:
    size = math.ceil(len(prompts) / iterations)
    return [prompts[i * size:(i + 1) * size] for i in range(iterations)]


def run_cell(cell: Cell, options: GridOptions, base_source: str, train_prompts: list,
             eval_sets: tuple[list[str], list[str]], workdir: Path, say=print) -> dict:
    """Make data, train and evaluate one cell from the base policy; returns its table row."""
    from agents import constitution as constitution_mod
    from agents.services import Services
    from cai import evaluate
    from streams.records import encode
    from trainer.config import TrainerConfig
    from trainer.data import parse_preference, parse_sft
    from trainer.rounds import Probe, RoundRunner
    from trainer.steps import PolicyLearner

    cpu0, wall0 = time.process_time(), time.monotonic()
    settings = pipeline_settings(cell, options).model_copy(update={"batch_size": options.gen_batch})
    inference = LocalInference(base_source, options.threads)
    svc = Services(settings, constitution_mod.load(settings.constitution), inference, ledger=None, send=None)
    sft_steps, dpo_steps = options.steps()
    train_sft = cell.revision != "none"
    config = TrainerConfig(model=base_source, lr=options.lr, beta=options.beta, batch_size=options.batch_size,
                           epochs=1, max_length=options.max_length, probe_size=0, sft=train_sft,
                           seed=options.seed)
    learner = PolicyLearner(base_source, config)
    runner = RoundRunner(config, learner)
    rng = random.Random(options.seed)
    timings = {"data_s": 0.0, "train_s": 0.0, "eval_s": 0.0}
    data_log = workdir / "data.jsonl"
    data_log.parent.mkdir(parents=True, exist_ok=True)
    data_log.write_text("")
    counts, train_metrics = [], []
    source = base_source
    for iteration, chunk in enumerate(_prompt_slices(train_prompts, options.iterations), 1):
        started = time.monotonic()
        sft, prefs = asyncio.run(make_data(svc, chunk, keep_chains=train_sft,
                                           progress=lambda m, i=iteration: say(f"  {cell.name} it{i}: {m}")))
        timings["data_s"] += time.monotonic() - started
        with data_log.open("a", encoding="utf-8") as handle:
            for record in sft + prefs:
                handle.write(json.dumps({"iteration": iteration, "type": type(record).__name__,
                                         **json.loads(encode(record))}, ensure_ascii=False) + "\n")
        sft_examples = [parse_sft(encode(r)) for r in sft]
        pref_examples = [parse_preference(encode(r)) for r in prefs]
        counts.append({"sft": len(sft_examples), "preferences": len(pref_examples),
                       "sft_changed": sum(r.response.strip() != r.initial_response.strip() for r in sft)})
        started = time.monotonic()
        result = runner.run(iteration, fill(sft_examples, sft_steps * options.batch_size, rng),
                            fill(pref_examples, dpo_steps * options.batch_size, rng), Probe())
        timings["train_s"] += time.monotonic() - started
        train_metrics.append({k: round(v, 4) for k, v in result.metrics.items()})
        say(f"  {cell.name} it{iteration}: {counts[-1]}, trained: "
            f"{ {k: round(v, 3) for k, v in result.metrics.items() if k.startswith('loss/')} }")
        source = str(workdir / f"policy-{iteration + 1}")
        learner.save(source)
        inference.set_policy(source, iteration + 1)
    del learner, runner, inference
    started = time.monotonic()
    harmful, benign = eval_sets
    say(f"  {cell.name}: evaluating on {len(harmful)} harmful + {len(benign)} benign held-out prompts")
    row = evaluate.evaluate_policy(source, harmful, benign, options.eval_max_new_tokens)
    timings["eval_s"] = time.monotonic() - started
    return {"name": cell.name, "revision": cell.revision, "preference": cell.preference,
            "harmless": row["harmless"], "explains_why": row["explains_why"], "over_refusal": row["over_refusal"],
            "cpu_minutes": round((time.process_time() - cpu0) / 60, 2),
            "wall_minutes": round((time.monotonic() - wall0) / 60, 2),
            "timings_s": {k: round(v, 1) for k, v in timings.items()},
            "steps_per_iteration": {"sft": sft_steps if train_sft else 0,
                                    "dpo": dpo_steps if cell.preference != "none" else 0},
            "data": counts, "train_metrics": train_metrics, "samples": row["samples"], "answers": row["answers"],
            "model": source}


def run_reference(name: str, source: str, eval_sets, options: GridOptions, system: str | None,
                  reminder: str | None = None, say=print) -> dict:
    """A row without training: the base policy, optionally with the constitution in context
    (a system prompt, or a reminder after each request): the 'teacher' that distillation copies."""
    from agents.strategies import with_reminder
    from cai import evaluate

    cpu0, wall0 = time.process_time(), time.monotonic()
    say(f"  {name}: evaluating")
    harmful, benign = eval_sets
    if reminder:
        harmful, benign = [with_reminder(p, reminder) for p in harmful], [with_reminder(p, reminder) for p in benign]
    row = evaluate.evaluate_policy(source, harmful, benign, options.eval_max_new_tokens, system=system)
    return {"name": name, "revision": "-", "preference": "-", "harmless": row["harmless"],
            "explains_why": row["explains_why"], "over_refusal": row["over_refusal"],
            "cpu_minutes": round((time.process_time() - cpu0) / 60, 2),
            "wall_minutes": round((time.monotonic() - wall0) / 60, 2), "system": system, "reminder": reminder,
            "samples": row["samples"], "answers": row["answers"], "model": source}


# ---- the grid -------------------------------------------------------------------------------------

def prompt_sets(options: GridOptions):
    """(training prompts, (held-out harmful, held-out benign)), chosen exactly as ``cai run`` does."""
    from cai.run import RunOptions, evaluation_sets, training_mix

    run_options = RunOptions(prompts=options.prompts, benign_share=options.benign_share, seed=options.seed,
                             eval_harmful=options.eval_harmful, eval_benign=options.eval_benign)
    return training_mix(run_options), evaluation_sets(run_options)


def markdown(report: dict) -> str:
    from cai.evaluate import fmt

    o = report["options"]
    setup = (f"Model `{o['model']}`, {o['prompts']} training prompts ({o['benign_share']:.0%} benign) over "
             f"{o['iterations']} iteration(s), {o['rounds']} revision round(s), seed {o['seed']}; per iteration "
             f"up to {report['steps']['sft']} SFT and {report['steps']['dpo']} DPO steps of {o['batch_size']} (LoRA, "
             f"lr {o['lr']}); held-out evaluation: {report['eval']['harmful']} harmful, "
             f"{report['eval']['benign']} benign prompts, greedy, {o['eval_max_new_tokens']} new tokens.")
    lines = [
        "# Strategy grid", "", setup, "",
        "| cell | harmless (declines) | explains why (of declines) | over-refusal (benign) | data (SFT changed / pref) | steps SFT / DPO | CPU min |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["rows"]:
        data = row.get("data")
        shown = (" + ".join(f"{d['sft_changed']}/{d['sft']} / {d['preferences']}" for d in data) if data else "-")
        steps = row.get("steps_per_iteration")
        steps = f"{steps['sft']} / {steps['dpo']}" if steps else "-"
        lines.append(f"| {row['name']} | {fmt(row['harmless'])} | {fmt(row['explains_why'])} | "
                     f"{fmt(row['over_refusal'])} | {shown} | {steps} | {row['cpu_minutes']:.1f} |")
    lines += ["", ("CPU minutes: `time.process_time()` of the grid process (user + system, all threads) for "
                   "the cell's data generation, training and evaluation; no child processes. Intervals: 95% Wilson."),
              ("Data column: per iteration, SFT records whose answer differs from the initial one / all SFT "
               "records / preference records."), f"Total wall time: {report.get('wall_minutes', 0):.1f} min."]
    return "\n".join(lines) + "\n"


def write(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    path.with_suffix(".md").write_text(markdown(report))


def run_grid(options: GridOptions, say=print) -> dict:
    from agents import constitution as constitution_mod
    from cai.settings import StackSettings
    from serving.models import resolve

    cells = options.check()
    started = time.monotonic()
    if options.threads:
        import torch

        torch.set_num_threads(options.threads)
    base = resolve(options.model, StackSettings().cache_dir)
    train, eval_sets = prompt_sets(options)
    sft_steps, dpo_steps = options.steps()
    report = {"options": {**asdict(options), "output": str(options.output)},
              "steps": {"sft": sft_steps, "dpo": dpo_steps},
              "eval": {"harmful": len(eval_sets[0]), "benign": len(eval_sets[1])},
              "train_prompts": {"harmful": sum(p.kind == "harmful" for p in train),
                                "helpful": sum(p.kind == "helpful" for p in train)},
              "rows": []}
    previous = {}
    if options.resume and options.output.exists():
        previous = {row["name"]: row for row in json.loads(options.output.read_text()).get("rows", [])}
    say(f"cai grid: {options.model}, {len(train)} training prompts, {len(cells)} cells, eval "
        f"{len(eval_sets[0])} harmful + {len(eval_sets[1])} benign; results in {options.output}")
    workroot = options.output.with_suffix("")
    plan: list[tuple[str, dict, Any]] = []   # (row name, the options it depends on, job)
    if options.baseline:
        plan.append(("baseline", options.reference_key(),
                     lambda: run_reference("baseline", base, eval_sets, options, None, None, say)))
    if options.teacher:
        constitution = constitution_mod.load()
        if options.context_placement == "user-suffix":
            name, system, reminder = "teacher (reminder)", None, constitution.reminder
        else:
            name, system, reminder = "teacher (system prompt)", constitution.system_prompt, None
        plan.append((name, {**options.reference_key(), "system": system, "reminder": reminder},
                     lambda: run_reference(name, base, eval_sets, options, system, reminder, say)))
    for cell in cells:
        plan.append((cell.name, options.key(), lambda cell=cell: run_cell(
            cell, options, base, train, eval_sets, workroot / cell.name.replace("+", "__"), say)))
    for number, (name, key, job) in enumerate(plan, 1):
        if name in previous and previous[name].get("key") == key:
            say(f"[{number}/{len(plan)}] {name}: kept from the previous run")
            report["rows"].append(previous[name])
        else:
            say(f"[{number}/{len(plan)}] {name}")
            row = {**job(), "key": key}
            say(f"[{number}/{len(plan)}] {name}: harmless {row['harmless']['value']}, explains "
                f"{row['explains_why']['value']}, over-refusal {row['over_refusal']['value']}, "
                f"{row['cpu_minutes']} CPU min")
            report["rows"].append(row)
        report["wall_minutes"] = round((time.monotonic() - started) / 60, 2)
        write(report, options.output)
    return report


# ---- command line ---------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    d = GridOptions()
    p.add_argument("--model", default=d.model, help="base policy (and critic/reviser/judge): tiny, smollm2, a folder")
    p.add_argument("--cells", nargs="+", default=list(d.cells), metavar="REV+PREF",
                   help=f"revision+preference pairs; revision in {', '.join((*REVISION_STRATEGIES, 'none'))}, "
                        f"preference in {', '.join((*PREFERENCE_STRATEGIES, 'none'))} (default: %(default)s)")
    p.add_argument("--prompts", type=int, default=d.prompts, help="training prompts in all (default: %(default)s)")
    p.add_argument("--benign-share", type=float, default=d.benign_share)
    p.add_argument("--iterations", type=int, default=d.iterations,
                   help="policy versions made in turn; each answers the next share of prompts")
    p.add_argument("--rounds", type=int, default=d.rounds, help="critique/revision rounds per chain")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="while making data")
    p.add_argument("--gen-batch", type=int, default=d.gen_batch, help="records per model call")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="training examples per step")
    p.add_argument("--sft-steps", type=int, help="SFT steps per iteration (default: one pass over the prompts)")
    p.add_argument("--dpo-steps", type=int, help="DPO steps per iteration (default: one pass over the prompts)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--beta", type=float, default=d.beta, help="DPO beta")
    p.add_argument("--max-length", type=int, default=d.max_length, help="training tokens per example")
    p.add_argument("--contrastive-label", choices=["construction", "judge"], default=d.contrastive_label)
    p.add_argument("--context-placement", choices=["system", "user-suffix"], default=d.context_placement,
                   help="constitution as system prompt, or as a reminder after the request (context/contrastive)")
    p.add_argument("--context-temperature", type=float,
                   help="temperature of context and contrast answers (default: the policy's, 0.7)")
    p.add_argument("--context-opening", action="store_true",
                   help="context answers (and contrastive 'toward' answers) to red-team prompts start with "
                        "the constitution's decline_opening; the policy writes the reason")
    p.add_argument("--eval-harmful", type=int, default=d.eval_harmful)
    p.add_argument("--eval-benign", type=int, default=d.eval_benign,
                   help="evaluate on the first N prompts of the built-in benign set's held-out split")
    p.add_argument("--eval-max-new-tokens", type=int, default=d.eval_max_new_tokens)
    p.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the untrained row")
    p.add_argument("--no-teacher", dest="teacher", action="store_false",
                   help="skip the untrained policy with the constitution as system prompt")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("-o", "--output", type=Path, default=d.output, help="JSON report; Markdown beside it")
    p.add_argument("--resume", action="store_true",
                   help="keep rows of an earlier run in OUTPUT whose options match")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--rescore", action="store_true",
                   help="train nothing: recompute the figures of OUTPUT's rows from their saved answers "
                        "with the current decline classifier")


def rescore(report: dict) -> dict:
    """Recompute every row's figures from its saved answers with the current classifier.

    The answers are greedy, so they do not change; the decline rules may (cai/classify.py). Rows
    written before answers were saved keep their figures and are marked ``rescored: false``.
    """
    from cai import evaluate

    for row in report["rows"]:
        answers = row.get("answers")
        row["rescored"] = bool(answers)
        if not answers:
            continue
        row.update(evaluate.score_answers(answers))
    return report


def options_from_args(args: argparse.Namespace) -> GridOptions:
    names = {f for f in GridOptions.__dataclass_fields__}
    return replace(GridOptions(), **{k: v for k, v in vars(args).items() if k in names})


def cmd_grid(args: argparse.Namespace) -> int:
    try:
        options = options_from_args(args)
        options.check()
    except GridError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.rescore:
        if not options.output.exists():
            print(f"error: --rescore needs an earlier report at {options.output}", file=sys.stderr)
            return 2
        report = rescore(json.loads(options.output.read_text()))
        write(report, options.output)
    else:
        report = run_grid(options, say=lambda m: print(m, file=sys.stderr, flush=True))
    print(markdown(report))
    print(f"report: {options.output} and {options.output.with_suffix('.md')}")
    return 0
