"""Running a strategy grid: each cell's data through the agents' own stage functions on
in-process models, the trainer's round on it, and the held-out evaluation; plus the untrained
reference rows. ``run_grid`` writes the report after every row (``cai/grid/report.py``)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cai.grid.options import Cell, GridOptions
from cai.grid.report import write
from serving.inference import LocalInference

logger = logging.getLogger(__name__)


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
        policy_max_new_tokens=options.max_new_tokens,
        critique_max_new_tokens=options.max_new_tokens,
        revision_max_new_tokens=options.max_new_tokens, redis_url="unused://", triton_grpc="unused")


async def make_data(svc, prompts, keep_chains: bool, progress=None) -> tuple[list, list]:
    """Run prompts through the stage functions; returns (SFT records, preference records).

    Outputs go to the next stage's ``process`` as they would through Kafka (encoded, decoded).
    With ``keep_chains`` False the revision chains are not run (a cell with no revision strategy).
    """
    from agents import compare, critique, policy, revise
    from streams import topics
    from streams.records import PromptRecord, decode, encode, now

    stages = {topics.PROMPTS: policy, topics.CRITIQUE: critique, topics.REVISE: revise,
              topics.COMPARE: compare}
    queues: dict[str, list] = {t: [] for t in stages}
    queues[topics.PROMPTS] = [PromptRecord(prompt_id=p.prompt_id, prompt=p.prompt, kind=p.kind,
                                           source=p.source,
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
    from scoring import evaluate
    from streams.records import encode
    from trainer.config import TrainerConfig
    from trainer.data import parse_preference, parse_sft
    from trainer.rounds import Probe, RoundRunner
    from trainer.steps import PolicyLearner

    cpu0, wall0 = time.process_time(), time.monotonic()
    settings = pipeline_settings(cell, options).model_copy(update={"batch_size": options.gen_batch})
    inference = LocalInference(base_source, options.threads)
    svc = Services(settings, constitution_mod.load(settings.constitution), inference, ledger=None,
                   send=None)
    sft_steps, dpo_steps = options.steps()
    train_sft = cell.revision != "none"
    config = TrainerConfig(model=base_source, lr=options.lr, beta=options.beta,
                           batch_size=options.batch_size,
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
        progress = lambda m, i=iteration: say(f"  {cell.name} it{i}: {m}")
        sft, prefs = asyncio.run(make_data(svc, chunk, keep_chains=train_sft, progress=progress))
        timings["data_s"] += time.monotonic() - started
        with data_log.open("a", encoding="utf-8") as handle:
            for record in sft + prefs:
                handle.write(json.dumps({"iteration": iteration, "type": type(record).__name__,
                                         **json.loads(encode(record))}, ensure_ascii=False) + "\n")
        sft_examples = [parse_sft(encode(r)) for r in sft]
        pref_examples = [parse_preference(encode(r)) for r in prefs]
        counts.append({"sft": len(sft_examples), "preferences": len(pref_examples),
                       "sft_changed": sum(r.response.strip() != r.initial_response.strip()
                                          for r in sft)})
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
    say(f"  {cell.name}: evaluating on {len(harmful)} harmful + {len(benign)} benign held-out "
        "prompts")
    row = evaluate.evaluate_policy(source, harmful, benign, options.eval_max_new_tokens)
    timings["eval_s"] = time.monotonic() - started
    return {"name": cell.name, "revision": cell.revision, "preference": cell.preference,
            "harmless": row["harmless"], "explains_why": row["explains_why"],
            "over_refusal": row["over_refusal"],
            "cpu_minutes": round((time.process_time() - cpu0) / 60, 2),
            "wall_minutes": round((time.monotonic() - wall0) / 60, 2),
            "timings_s": {k: round(v, 1) for k, v in timings.items()},
            "steps_per_iteration": {"sft": sft_steps if train_sft else 0,
                                    "dpo": dpo_steps if cell.preference != "none" else 0},
            "data": counts, "train_metrics": train_metrics, "samples": row["samples"],
            "answers": row["answers"],
            "model": source}


def run_reference(name: str, source: str, eval_sets, options: GridOptions, system: str | None,
                  reminder: str | None = None, say=print) -> dict:
    """A row without training: the base policy, optionally with the constitution in context
    (a system prompt, or a reminder after each request): the 'teacher' that distillation copies."""
    from agents.strategies import with_reminder
    from scoring import evaluate

    cpu0, wall0 = time.process_time(), time.monotonic()
    say(f"  {name}: evaluating")
    harmful, benign = eval_sets
    if reminder:
        harmful = [with_reminder(p, reminder) for p in harmful]
        benign = [with_reminder(p, reminder) for p in benign]
    row = evaluate.evaluate_policy(source, harmful, benign, options.eval_max_new_tokens,
                                   system=system)
    return {"name": name, "revision": "-", "preference": "-", "harmless": row["harmless"],
            "explains_why": row["explains_why"], "over_refusal": row["over_refusal"],
            "cpu_minutes": round((time.process_time() - cpu0) / 60, 2),
            "wall_minutes": round((time.monotonic() - wall0) / 60, 2), "system": system,
            "reminder": reminder,
            "samples": row["samples"], "answers": row["answers"], "model": source}


def prompt_sets(options: GridOptions):
    """(training prompts, (held-out harmful, held-out benign)), chosen exactly as ``cai run``
    does."""
    from cai.run import RunOptions, evaluation_sets, training_mix

    run_options = RunOptions(prompts=options.prompts, benign_share=options.benign_share,
                             seed=options.seed,
                             eval_harmful=options.eval_harmful, eval_benign=options.eval_benign)
    return training_mix(run_options), evaluation_sets(run_options)


def run_grid(options: GridOptions, say=print) -> dict:
    from agents import constitution as constitution_mod
    from core.settings import StackSettings
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
        rows = json.loads(options.output.read_text()).get("rows", [])
        previous = {row["name"]: row for row in rows}
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
