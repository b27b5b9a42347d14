"""Running a grid: each (cell, seed) is a `cai run` without Kafka and Triton.

The same prompts per round (``cai.run.training_mix``), the same stage functions (the records
go through ``agents`` policy/critique/revise/compare in-process, encoded and decoded on every
hop), the same trainer (``trainer.loop.TrainerLoop`` with the run's ``TrainerConfig``: ingest,
carry-over, gate, checkpoint), the same held-out evaluation of every served version. Only the
transport differs: records reach the trainer from memory, and a promoted round's weights serve
the next round from memory instead of through Triton. ``run_grid`` writes the report after
every row (``cai/grid/report.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cai.grid.options import Cell, GridOptions
from cai.grid.report import pooled, write
from serving.inference import LocalInference

logger = logging.getLogger(__name__)
SFT, PREFERENCES = "sft", "preferences"


async def make_data(svc, prompts, progress=None) -> tuple[list, list]:
    """Run prompts through the stage functions; returns (SFT records, preference records).

    Outputs go to the next stage's ``process`` as they would through Kafka (encoded, decoded).
    """
    from agents import compare, critique, policy, revise
    from streams import topics
    from streams.records import PromptRecord, decode, encode, now

    stages = {topics.PROMPTS: policy, topics.CRITIQUE: critique, topics.REVISE: revise,
              topics.COMPARE: compare}
    queues: dict[str, list] = {t: [] for t in stages}
    queues[topics.PROMPTS] = [PromptRecord(prompt_id=p.prompt_id, prompt=p.prompt, kind=p.kind,
                                           source=p.source, created_at=now()) for p in prompts]
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
                        (out if o.topic in out else queues)[o.topic].append(record)
                if progress:
                    progress(f"{stage.NAME} {min(start + batch, len(records))}/{len(records)}")
    return out[topics.SFT], out[topics.PREFERENCES]


class MemorySource:
    """The trainer's ``Source`` over records handed to it in memory (one partition a topic)."""

    def __init__(self):
        self.log: dict[str, list[bytes]] = {SFT: [], PREFERENCES: []}
        self.position = {f"{SFT}/0": 0, f"{PREFERENCES}/0": 0}

    def push(self, topic: str, values: list[bytes]) -> None:
        self.log[topic].extend(values)

    def start(self, offsets: dict[str, int]) -> dict[str, int]:
        self.position.update({k: v for k, v in offsets.items() if k in self.position})
        return dict(self.position)

    def poll(self, timeout_s: float, max_records: int) -> list:
        from trainer.loop import Message

        out = []
        for key in sorted(self.position):
            topic = key.rsplit("/", 1)[0]
            while self.position[key] < len(self.log[topic]) and len(out) < max_records:
                out.append(Message(topic, 0, self.position[key],
                                   self.log[topic][self.position[key]]))
                self.position[key] += 1
        return out

    def commit(self, offsets: dict[str, int]) -> None:
        pass

    def close(self) -> None:
        pass


class LocalPublisher:
    """The trainer's ``Publisher`` for in-process serving: a promoted round's folder becomes the
    policy that answers the next round's prompts."""

    def __init__(self, inference: LocalInference):
        self.inference = inference
        self.version = 1
        self.reward_version = 1
        self.served: dict[int, str] = {}
        self.rounds: list[dict] = []
        self.samples: list = []  # RLSampleRecords a live trainer would send (mode 'rloo')

    def publish(self, checkpoint_dir: Path) -> int:
        self.version += 1
        self.served[self.version] = str(checkpoint_dir)
        self.inference.set_policy(str(checkpoint_dir), self.version)
        return self.version

    def announce(self, version: int, checkpoint_dir: Path, metrics: dict) -> None:
        pass

    def current_version(self) -> int:
        return self.version

    def find_published(self, checkpoint_dir: Path) -> int | None:
        return next((v for v, path in self.served.items() if path == str(checkpoint_dir)), None)

    def record_round(self, summary: dict) -> None:
        self.rounds.append(summary)

    def publish_reward(self, folder: Path) -> int:
        self.reward_version += 1
        self.inference.set_reward(str(folder), self.reward_version)
        return self.reward_version

    def send_samples(self, records: list) -> None:
        self.samples.extend(records)


def pipeline_settings(cell: Cell, options: GridOptions, seed: int):
    """The PipelineSettings a worker would run this cell with."""
    from agents.settings import PipelineSettings
    from core.recipes import RECIPES

    return PipelineSettings(**{**RECIPES[cell.recipe].pipeline, **cell.pipeline,
                               "rounds": options.revisions, "seed": seed,
                               "redis_url": "unused://", "triton_grpc": "unused"})


def run_cell(cell: Cell, options: GridOptions, seed: int, base: str, workdir: Path,
             say: Callable[[str], Any] = print) -> dict:
    """One (cell, seed): the rounds of `cai run`, in-process; returns its table row."""
    from agents import constitution as constitution_mod
    from agents.services import Services
    from cai.run import evaluation_sets, served_versions, trainer_config, training_mix
    from scoring import evaluate
    from streams.records import encode
    from trainer import checkpoint
    from trainer.loop import TrainerLoop
    from trainer.rl import Rollouts

    cpu0, wall0 = time.process_time(), time.monotonic()
    run_options = options.run_options(cell, seed)
    settings = pipeline_settings(cell, options, seed)
    config = trainer_config(run_options)
    inference = LocalInference(base, options.threads)
    svc = Services(settings, constitution_mod.load(settings.constitution), inference, ledger=None,
                   send=None)
    source, publisher = MemorySource(), LocalPublisher(inference)
    workdir.mkdir(parents=True, exist_ok=True)
    loop = TrainerLoop(config, workdir / "trainer", base, source, publisher, SFT, PREFERENCES,
                       keep_checkpoints=options.rounds + 1,
                       rollouts=Rollouts(lambda engines=inference: engines, close=False))
    loop.resume()
    timings = {"data_s": 0.0, "train_s": 0.0, "eval_s": 0.0}
    data_log = workdir / "data.jsonl"
    data_log.write_text("")
    for number, prompts in enumerate(training_mix(run_options), 1):
        started = time.monotonic()
        sft, prefs = asyncio.run(make_data(
            svc, prompts, progress=lambda m, n=number: say(f"  {cell.name} s{seed} r{n}: {m}")))
        timings["data_s"] += time.monotonic() - started
        with data_log.open("a", encoding="utf-8") as handle:
            for record in sft + prefs:
                handle.write(json.dumps({"round": number, "type": type(record).__name__,
                                         **json.loads(encode(record))}, ensure_ascii=False) + "\n")
        source.push(SFT, [encode(r) for r in sft])
        source.push(PREFERENCES, [encode(r) for r in prefs])
        started = time.monotonic()
        loop.gather()  # every record is in: the pipeline has drained
        loop.run_round()
        timings["train_s"] += time.monotonic() - started
        summary = publisher.rounds[-1]
        say(f"  {cell.name} s{seed} r{number}: {checkpoint.round_outcome(summary)}")
    rounds = publisher.rounds
    del loop, inference
    harmful, benign = evaluation_sets(run_options)
    policies = {}
    started = time.monotonic()
    for version in served_versions(rounds):
        say(f"  {cell.name} s{seed}: evaluating v{version} on {len(harmful)} harmful + "
            f"{len(benign)} benign held-out prompts")
        policies[f"v{version}"] = evaluate.evaluate_policy(
            publisher.served.get(version, base), harmful, benign, options.eval_max_new_tokens)
    timings["eval_s"] = time.monotonic() - started
    final = policies[list(policies)[-1]]
    return {"name": cell.name, "cell": cell.name, "seed": seed,
            **{name: final[name] for name in evaluate.FIGURES},
            "versions": {v: {name: p[name] for name in evaluate.FIGURES}
                         for v, p in policies.items()},
            "rounds": rounds, "trainer_config": config.to_dict(),
            "pipeline": settings.model_dump(mode="json", include=set(cell.pipeline) | {
                "strategy", "preference", "compare", "context_opening", "context_placement"}),
            "cpu_minutes": round((time.process_time() - cpu0) / 60, 2),
            "wall_minutes": round((time.monotonic() - wall0) / 60, 2),
            "timings_s": {k: round(v, 1) for k, v in timings.items()},
            "answers": final["answers"], "samples": final["samples"]}


def run_reference(name: str, source: str, options: GridOptions, seed: int,
                  reminder: str | None = None, say=print) -> dict:
    """A row without training: the base policy, optionally with the constitution's reminder
    after each request (the 'teacher' that context distillation copies)."""
    from agents.strategies import with_reminder
    from cai.run import evaluation_sets
    from core.recipes import DEFAULT_RECIPE
    from scoring import evaluate

    cpu0, wall0 = time.process_time(), time.monotonic()
    say(f"  {name} s{seed}: evaluating")
    harmful, benign = evaluation_sets(options.run_options(Cell(DEFAULT_RECIPE), seed))
    if reminder:
        harmful = [with_reminder(p, reminder) for p in harmful]
        benign = [with_reminder(p, reminder) for p in benign]
    row = evaluate.evaluate_policy(source, harmful, benign, options.eval_max_new_tokens)
    return {"name": name, "cell": name, "seed": seed,
            **{figure: row[figure] for figure in evaluate.FIGURES},
            "cpu_minutes": round((time.process_time() - cpu0) / 60, 2),
            "wall_minutes": round((time.monotonic() - wall0) / 60, 2), "reminder": reminder,
            "samples": row["samples"], "answers": row["answers"]}


def folder_name(cell: Cell, seed: int) -> str:
    """A row's working folder: the cell's name made file-safe, and the seed."""
    return f"{re.sub(r'[^A-Za-z0-9.]+', '-', cell.name).strip('-')[:80]}-s{seed}"


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
    report = {"options": {**json.loads(json.dumps(options.__dict__, default=str))},
              "rows": [], "pooled": []}
    previous = {}
    if options.resume and options.output.exists():
        rows = json.loads(options.output.read_text()).get("rows", [])
        previous = {(row["cell"], row["seed"]): row for row in rows}
    say(f"cai grid: {options.model}, cells {', '.join(c.name for c in cells)}, seeds "
        f"{options.seeds}, {options.rounds} rounds of {options.prompts} prompts; results in "
        f"{options.output}")
    workroot = options.output.with_suffix("")
    plan: list[tuple[str, int, dict, Any]] = []   # (cell, seed, the options it depends on, job)
    for seed in options.seeds:
        if options.baseline:
            plan.append(("baseline", seed, options.reference_key(seed),
                         lambda s=seed: run_reference("baseline", base, options, s, None, say)))
        if options.teacher:
            reminder = constitution_mod.load().reminder
            plan.append(("teacher (reminder)", seed,
                         {**options.reference_key(seed), "reminder": reminder},
                         lambda s=seed, r=reminder: run_reference("teacher (reminder)", base,
                                                                  options, s, r, say)))
        for cell in cells:
            folder = workroot / folder_name(cell, seed)
            plan.append((cell.name, seed, options.key(), lambda c=cell, s=seed, f=folder:
                         run_cell(c, options, s, base, f, say)))
    for number, (name, seed, key, job) in enumerate(plan, 1):
        kept = previous.get((name, seed))
        if kept and kept.get("key") == key:
            say(f"[{number}/{len(plan)}] {name} seed {seed}: kept from the previous run")
            report["rows"].append(kept)
        else:
            say(f"[{number}/{len(plan)}] {name} seed {seed}")
            row = {**job(), "key": key}
            say(f"[{number}/{len(plan)}] {name} seed {seed}: " + ", ".join(
                f"{figure} {row[figure]['value']}" for figure in
                ("harmless", "explains_why", "declined_then_complied", "over_refusal"))
                + f", {row['cpu_minutes']} CPU min")
            report["rows"].append(row)
        report["pooled"] = pooled(report["rows"])
        report["wall_minutes"] = round((time.monotonic() - started) / 60, 2)
        write(report, options.output)
    return report
