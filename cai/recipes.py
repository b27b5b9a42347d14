"""How `cai run` makes revisions and preference labels, and how hard its trainer learns from them.

A recipe is a set of ``CAI_PIPELINE_*`` settings for the worker (docs/strategies.md) plus extra
`cai trainer` flags. `cai run` uses DEFAULT_RECIPE, the best row of the SmolLM2 strategy grid; a
``CAI_PIPELINE_*`` variable set in the environment overrides the recipe's value. Kept free of
heavy imports: the command-line parser reads it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    pipeline: dict[str, str]       # CAI_PIPELINE_* settings of the worker
    trainer: tuple[str, ...] = ()  # extra `cai trainer` arguments


RECIPES: dict[str, Recipe] = {
    # Context distillation: the policy answers red-team prompts again with the constitution's
    # reminder after the request, greedily, its answer opened by the constitution's decline
    # opening so that it writes the reason itself; contrastive pairs (toward vs a careless style,
    # on red-team and benign prompts) add DPO. As in the grid's winning cell: 48-token answers,
    # lr 1e-3, SFT given three times the passes of DPO, the pairs last.
    "context-distillation": Recipe(
        pipeline={"CAI_PIPELINE_STRATEGY": "context", "CAI_PIPELINE_PREFERENCE": "contrastive",
                  "CAI_PIPELINE_CONTEXT_PLACEMENT": "user-suffix", "CAI_PIPELINE_CONTEXT_TEMPERATURE": "0",
                  "CAI_PIPELINE_CONTEXT_OPENING": "true", "CAI_PIPELINE_POLICY_MAX_NEW_TOKENS": "48"},
        trainer=("--lr", "1e-3", "--epochs", "6", "--dpo-epochs", "2", "--max-length", "256")),
    # The paper's SL-CAI + RL-CAI data: critique -> revise rounds, the judge's soft labels.
    "paper": Recipe(pipeline={"CAI_PIPELINE_STRATEGY": "critique-revise", "CAI_PIPELINE_PREFERENCE": "judge"}),
}
DEFAULT_RECIPE = "context-distillation"
# Every recipe's trainer also answers a sample of benign training prompts before and after each
# round, and rejects a round that makes the policy decline more of them (trainer/refusal.py).
REFUSAL_GATE: tuple[str, ...] = ("--refusal-prompts", "benign")


def pipeline_settings(name: str) -> dict[str, str]:
    """The recipe's worker settings, each overridden by the same variable in the environment."""
    return {key: os.environ.get(key, value) for key, value in RECIPES[name].pipeline.items()}
