"""How `cai run` makes revisions and preference labels, and how hard its trainer learns from them.

A recipe is typed: ``pipeline`` holds ``PipelineSettings`` fields for the worker
(docs/results-log.md), ``trainer`` holds ``TrainerConfig`` fields. `cai run` hands the worker
its fields as ``CAI_PIPELINE_*`` variables (``pipeline_env``; a variable already set in the
environment wins over the recipe's value) and the trainer a config file built from its fields
(``cai/run.py``). `cai run` uses DEFAULT_RECIPE, the best row of the SmolLM2 strategy grid.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Recipe:
    pipeline: dict[str, Any]                               # PipelineSettings fields (the worker)
    trainer: dict[str, Any] = field(default_factory=dict)  # TrainerConfig fields


RECIPES: dict[str, Recipe] = {
    # Context distillation (docs/strategies.md): the policy answers red-team prompts again with
    # the constitution's reminder after the request, greedily, its answer opened by the
    # constitution's decline opening so that it writes the reason itself; the cleaned decline
    # (agents/targets.py: it ends after the reason) is the SFT target, and is preferred over the
    # policy's plain answer (DPO). Helpful prompts give their answer as SFT target and a pair
    # preferring it over the bare decline, so the line between the two is learnt by meaning.
    "context-distillation": Recipe(
        pipeline={"strategy": "context", "preference": "revision-over-initial",
                  "compare": "initial-vs-final", "helpful_pairs": True,
                  "context_placement": "user-suffix", "context_temperature": 0,
                  "context_opening": True, "policy_max_new_tokens": 64},
        trainer={"lr": 1e-3, "epochs": 6, "dpo_epochs": 2, "max_length": 256}),
    # The paper's SL-CAI + RL-CAI data: critique -> revise rounds, the judge's soft labels.
    "paper": Recipe(pipeline={"strategy": "critique-revise", "preference": "judge"}),
}
DEFAULT_RECIPE = "context-distillation"


def env_name(field_name: str) -> str:
    """The worker's environment variable for a ``PipelineSettings`` field."""
    return f"CAI_PIPELINE_{field_name.upper()}"


def env_value(value: Any) -> str:
    """A field value as pydantic-settings reads it back from the environment."""
    return json.dumps(value) if isinstance(value, bool) else str(value)


def worker_env(pipeline: dict[str, Any]) -> dict[str, str]:
    """``PipelineSettings`` fields as the worker's ``CAI_PIPELINE_*`` variables."""
    return {env_name(k): env_value(v) for k, v in pipeline.items()}


def roles(name: str) -> tuple[str, ...]:
    """The model roles the recipe's pipeline calls (settings from the environment applied)."""
    from agents.settings import PipelineSettings
    from agents.strategies import roles_called

    fields = {k: v for k, v in RECIPES[name].pipeline.items() if env_name(k) not in os.environ}
    return roles_called(PipelineSettings(**fields))


def pipeline_env(name: str) -> dict[str, str]:
    """The recipe's worker settings as ``CAI_PIPELINE_*`` variables, each overridden by the same
    variable in the environment."""
    return {key: os.environ.get(key, value)
            for key, value in worker_env(RECIPES[name].pipeline).items()}
