"""What a strategy grid runs: its cells (``REVISION+PREFERENCE``) and its options, each declared
once with its help text (``core.options`` builds ``cai grid``'s flags from them)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from agents.settings import CONTRASTIVE_LABELS, PLACEMENTS, PipelineSettings
from core.options import option
from streams.records import PREFERENCE_STRATEGIES, REVISION_STRATEGIES

DEFAULT_CELLS = ("critique-revise+judge", "direct+revision-over-initial", "context+none",
                 "context+revision-over-initial", "none+contrastive")
REVISIONS = (*REVISION_STRATEGIES, "none")      # "none": no SFT
PREFERENCES = (*PREFERENCE_STRATEGIES, "none")  # "none": no DPO


def _worker_default(name: str):
    """A cell runs the worker's settings: where the grid has the same knob, the same default."""
    return PipelineSettings.model_fields[name].default


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
        if revision not in REVISIONS:
            raise GridError(f"cell {text!r}: revision {revision!r} is not one of "
                            f"{', '.join(REVISIONS)}")
        if preference not in PREFERENCES:
            raise GridError(f"cell {text!r}: preference {preference!r} is not one of "
                            f"{', '.join(PREFERENCES)}")
        if revision == "none" and preference in ("judge", "revision-over-initial"):
            raise GridError(f"cell {text!r}: {preference} labels (initial, revision) pairs and "
                            "needs a revision strategy; use contrastive with revision 'none'")
        if revision == "none" and preference == "none":
            raise GridError(f"cell {text!r} trains nothing; the untrained policy is the "
                            "'baseline' row")
        return cls(revision, preference)


@dataclass
class GridOptions:
    model: str = option("smollm2", "base policy (and critic/reviser/judge): tiny, smollm2, a "
                        "folder")
    cells: list[str] = option(
        default_factory=lambda: list(DEFAULT_CELLS), metavar="REV+PREF",
        help=f"revision+preference pairs; revision in {', '.join(REVISIONS)}, preference in "
             f"{', '.join(PREFERENCES)}")
    prompts: int = option(48, "training prompts in all, split across iterations")
    benign_share: float = option(0.25, "share of the training prompts that are benign")
    iterations: int = option(1, "policy versions made in turn; each answers the next share of "
                                "prompts")
    rounds: int = option(1, "critique/revision rounds per chain")
    max_new_tokens: int = option(64, "policy, critique and revision answers while making data")
    gen_batch: int = option(8, "records per model call")
    batch_size: int = option(4, "training examples (pairs) per optimizer step")
    sft_steps: int | None = option(None, "SFT steps per iteration (default: one pass over the "
                                         "prompts)")
    dpo_steps: int | None = option(None, "DPO steps per iteration (default: one pass over the "
                                         "prompts)")
    lr: float = option(2e-4, "learning rate (LoRA)")
    beta: float = option(0.1, "DPO beta")
    max_length: int = option(256, "training tokens per example")
    contrastive_label: str = option(
        _worker_default("contrastive_label"), "contrastive pairs: p_chosen=1 by construction, or "
        "the judge's probability", choices=CONTRASTIVE_LABELS)
    context_placement: str = option(
        _worker_default("context_placement"), "constitution as system prompt, or as a reminder "
        "after the request (context/contrastive)", choices=PLACEMENTS)
    context_temperature: float | None = option(
        _worker_default("context_temperature"),
        "temperature of context and contrast answers (default: the policy's, 0.7)")
    context_opening: bool = option(
        _worker_default("context_opening"), "context answers (and contrastive 'toward' answers) "
        "to red-team prompts start with the constitution's decline_opening; the policy writes "
        "the reason")
    eval_harmful: int = option(40, "held-out harmful prompts to evaluate on")
    eval_benign: int = option(16, "evaluate on the first N prompts of the built-in benign set's "
                                  "held-out split")
    eval_max_new_tokens: int = option(64, "tokens per evaluation answer (greedy)")
    baseline: bool = option(True, "evaluate the untrained policy (--no-baseline skips the row)")
    teacher: bool = option(True, "evaluate the untrained policy with the constitution in context "
                                 "(--no-teacher skips the row)")
    seed: int = option(0, "seeds the prompt draw, sampling and training")
    output: Path = option(Path("reports/grid.json"), "JSON report; Markdown beside it",
                          aliases=("-o",))
    resume: bool = option(False, "keep rows of an earlier run in OUTPUT whose options match")
    threads: int | None = option(None, "torch threads (default: torch's choice)")

    def check(self) -> list[Cell]:
        cells = [Cell.parse(c) for c in self.cells]
        if len({c.name for c in cells}) != len(cells):
            raise GridError("cells: a cell is listed twice; list each once")
        for name in ("prompts", "iterations", "rounds", "max_new_tokens", "gen_batch",
                     "batch_size", "eval_max_new_tokens"):
            if getattr(self, name) < 1:
                raise GridError(f"{name}={getattr(self, name)} must be at least 1")
        if self.prompts < self.iterations:
            raise GridError(f"prompts={self.prompts} cannot be split over "
                            f"iterations={self.iterations}")
        if self.contrastive_label not in CONTRASTIVE_LABELS:
            raise GridError(f"contrastive_label must be one of {', '.join(CONTRASTIVE_LABELS)}")
        if self.context_placement not in PLACEMENTS:
            raise GridError(f"context_placement must be one of {', '.join(PLACEMENTS)}")
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


@dataclass
class GridCommand:
    rescore: bool = option(False, "train nothing: recompute the figures of OUTPUT's rows from "
                                  "their saved answers with the current decline classifier")
