"""What a grid runs: its cells (recipes, each with optional field changes) and its options, each
declared once with its help text (``core.options`` builds ``cai grid``'s flags from them).

A cell is ``RECIPE`` or ``RECIPE:field=value,field=value``: a recipe of ``cai/recipes.py`` with
some of its worker (``PipelineSettings``) or trainer (``TrainerConfig``) fields changed, e.g.
``context-distillation:lr=5e-4,epochs=4``. The run options (rounds, prompts per round, benign
share, evaluation sizes) default to ``cai run``'s, so a grid cell is a ``cai run`` without Kafka
and Triton.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agents.settings import PipelineSettings
from cai.run import RunOptions
from core.options import integers, option
from core.recipes import DEFAULT_RECIPE, RECIPES
from trainer.config import TrainerConfig

_RUN_DEFAULTS = RunOptions.__dataclass_fields__


def _run_default(name: str) -> Any:
    """The grid runs what `cai run` runs: where both have a knob, the same default."""
    f = _RUN_DEFAULTS[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


class GridError(ValueError):
    """An unusable grid option; the message names it and the fix."""


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _is_list_field(name: str) -> bool:
    f = TrainerConfig.__dataclass_fields__[name]
    return f.default_factory is not dataclasses.MISSING and isinstance(f.default_factory(), list)


@dataclass(frozen=True)
class Cell:
    recipe: str
    pipeline: dict[str, Any] = field(default_factory=dict)  # PipelineSettings changes
    trainer: dict[str, Any] = field(default_factory=dict)   # TrainerConfig changes
    text: str = ""

    @property
    def name(self) -> str:
        return self.text or self.recipe

    @classmethod
    def parse(cls, text: str) -> Cell:
        recipe, _, changes = text.partition(":")
        if recipe not in RECIPES:
            raise GridError(f"cell {text!r}: recipe {recipe!r} is not one of "
                            f"{', '.join(sorted(RECIPES))}")
        pipeline, trainer = {}, {}
        for item in filter(None, (part.strip() for part in changes.split(","))):
            name, sep, value = item.partition("=")
            if not sep:
                raise GridError(f"cell {text!r}: write field=value, e.g. {recipe}:lr=5e-4")
            if name in PipelineSettings.model_fields:
                pipeline[name] = _value(value)
            elif name in TrainerConfig.__dataclass_fields__:
                trainer[name] = _value(value)
                if _is_list_field(name) and isinstance(trainer[name], str):
                    trainer[name] = trainer[name].split("+")  # lora_targets=q_proj+v_proj
            else:
                raise GridError(f"cell {text!r}: {name!r} is neither a worker setting "
                                "(PipelineSettings) nor a trainer field (TrainerConfig)")
        return cls(recipe, pipeline, trainer, text)


@dataclass
class GridOptions:
    model: str = option("smollm2", "base policy (and the other roles): tiny, smollm2, a folder")
    cells: list[str] = option(
        default_factory=lambda: [DEFAULT_RECIPE], metavar="RECIPE[:field=value,...]",
        help=f"recipes to compare ({', '.join(sorted(RECIPES))}), each optionally with worker "
             "or trainer fields changed")
    seeds: list[int] = option(default_factory=lambda: [0], type=integers,
                              help="seeds (comma-separated); each draws its own prompts and "
                                   "trains its own policy")
    rounds: int = option(_run_default("rounds"), "training rounds, as `cai run --rounds`")
    prompts: int = option(_run_default("prompts"), "prompts per round, as `cai run --prompts`")
    benign_share: float = option(_run_default("benign_share"),
                                 "share of benign prompts, as `cai run --benign-share`")
    contrast_benign: bool = option(_run_default("contrast_benign"),
                                   "benign prompts closest in wording to the red-team ones, as "
                                   "`cai run --contrast-benign`")
    revisions: int = option(_run_default("revisions"), "critique/revision rounds per prompt")
    eval_harmful: int = option(_run_default("eval_harmful"), "held-out harmful prompts")
    eval_benign: int = option(_run_default("eval_benign"), "held-out benign prompts")
    eval_max_new_tokens: int = option(_run_default("eval_max_new_tokens"),
                                      "tokens per evaluation answer (greedy)")
    baseline: bool = option(True, "evaluate the untrained policy (--no-baseline skips the row)")
    teacher: bool = option(False, "evaluate the untrained policy with the constitution's "
                                  "reminder after each request: what distillation copies")
    output: Path = option(Path("reports/grid.json"), "JSON report; Markdown beside it",
                          aliases=("-o",))
    resume: bool = option(False, "keep rows of an earlier run in OUTPUT whose options match")
    threads: int | None = option(None, "torch threads (default: all cores)")

    def check(self) -> list[Cell]:
        cells = [Cell.parse(c) for c in self.cells]
        if len({c.name for c in cells}) != len(cells):
            raise GridError("cells: a cell is listed twice; list each once")
        for name in ("rounds", "prompts", "eval_max_new_tokens"):
            if getattr(self, name) < 1:
                raise GridError(f"{name}={getattr(self, name)} must be at least 1")
        if not self.seeds:
            raise GridError("seeds: give at least one, e.g. --seeds 0,1,2")
        return cells

    def run_options(self, cell: Cell, seed: int) -> RunOptions:
        """The `cai run` options this cell and seed stand for."""
        return RunOptions(model=self.model, rounds=self.rounds, max_rounds=self.rounds,
                          prompts=self.prompts,
                          benign_share=self.benign_share,
                          contrast_benign=self.contrast_benign, revisions=self.revisions,
                          recipe=cell.recipe, eval_harmful=self.eval_harmful,
                          eval_benign=self.eval_benign,
                          eval_max_new_tokens=self.eval_max_new_tokens, seed=seed,
                          trainer_overrides=dict(cell.trainer))

    def key(self) -> dict:
        """The options that decide a row's result (resume only reuses matching rows)."""
        data = json.loads(json.dumps(asdict(self), default=str))
        for name in ("cells", "seeds", "output", "resume", "threads", "baseline", "teacher"):
            data.pop(name)
        return data

    def reference_key(self, seed: int) -> dict:
        """The options that decide an untrained row's result: the model and the evaluation."""
        return {"model": self.model, "eval_harmful": self.eval_harmful,
                "eval_benign": self.eval_benign, "eval_max_new_tokens": self.eval_max_new_tokens,
                "seed": seed}


@dataclass
class GridCommand:
    rescore: bool = option(False, "train nothing: recompute the figures of OUTPUT's rows from "
                                  "their saved answers with the current decline classifier")
