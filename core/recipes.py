"""How `cai run` makes revisions and preference labels, and how hard its trainer learns from them.

A recipe is typed: ``pipeline`` holds ``PipelineSettings`` fields for the worker
(docs/results-log.md), ``trainer`` holds ``TrainerConfig`` fields. `cai run` hands the worker
its fields as ``CAI_PIPELINE_*`` variables (``pipeline_env``; a variable already set in the
environment wins over the recipe's value) and the trainer a config file built from
``trainer_fields``. docker-compose passes the same recipe by name: ``cai worker --recipe NAME``
(``over_settings``) and ``cai trainer --recipe NAME`` (``trainer_fields``). `cai run` uses
DEFAULT_RECIPE, the best row of the SmolLM2 strategy grid. Plain data: this module sits on the
ground floor so that the worker, the trainer and `cai run` all read it.
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
    # Context distillation: the policy answers red-team prompts again with the constitution's
    # reminder after the request, greedily, its answer opened by the constitution's decline
    # opening so that it writes the reason itself; contrastive pairs (toward vs a careless
    # style, on red-team and benign prompts) add DPO. As in the grid's winning cell: 48-token
    # answers, lr 1e-3, SFT given three times the passes of DPO, the pairs last.
    "context-distillation": Recipe(
        pipeline={"strategy": "context", "preference": "contrastive",
                  "context_placement": "user-suffix", "context_temperature": 0,
                  "context_opening": True, "policy_max_new_tokens": 48},
        trainer={"lr": 1e-3, "epochs": 6, "dpo_epochs": 2, "max_length": 256}),
    # The paper's SL-CAI + RL-CAI data: critique -> revise rounds, the judge's soft labels.
    "paper": Recipe(pipeline={"strategy": "critique-revise", "preference": "judge"}),
}
DEFAULT_RECIPE = "context-distillation"
# Every recipe's trainer also answers a sample of benign training prompts before and after each
# round, and rejects a round that makes the policy decline more of them (trainer/refusal.py).
REFUSAL_GATE: dict[str, Any] = {"refusal_prompts": "benign"}
# Prompts `cai run` feeds by default; the trainer's round size follows from it.
RUN_PROMPTS = 24


def trainer_fields(name: str, prompts: int = RUN_PROMPTS) -> dict[str, Any]:
    """``TrainerConfig`` fields of a live run of recipe ``name`` feeding ``prompts`` prompts: the
    round settings, the refusal gate, then the recipe's own fields."""
    # One round should see both kinds of example, as the strategy grid trains them: every prompt
    # gives about one SFT record and one preference pair. Rounds made of one kind alone were
    # lopsided (SFT-only rounds taught refusing; pair-only rounds were rejected by the probe).
    # The probe keeps one example per record type and prompt kind (up to 4) out of training.
    # The compare stage drops a helpful prompt's pair when its toward answer refuses, so the
    # count can fall short of this; the 240 s timer then closes the round, and later examples go
    # to the next.
    return {
        "round_every_examples": max(4, 2 * prompts - 4), "round_every_seconds": 240.0,
        # The probe holds the first examples of each type and prompt kind:
        # keep it small so that a short run still has data to train on.
        "probe_size": 1,
        **REFUSAL_GATE,
        # Versions change every few minutes in a short run: keep older data.
        "staleness_policy": "downweight",
        **RECIPES[name].trainer}


def over_settings(settings, name: str):
    """``settings`` (a pydantic-settings object) with recipe ``name``'s pipeline fields for every
    field that neither the environment nor a flag set."""
    chosen = {k: getattr(settings, k) for k in settings.model_fields_set}
    return type(settings)(**{**RECIPES[name].pipeline, **chosen})


def env_name(field_name: str) -> str:
    """The worker's environment variable for a ``PipelineSettings`` field."""
    return f"CAI_PIPELINE_{field_name.upper()}"


def env_value(value: Any) -> str:
    """A field value as pydantic-settings reads it back from the environment."""
    return json.dumps(value) if isinstance(value, bool) else str(value)


def worker_env(pipeline: dict[str, Any]) -> dict[str, str]:
    """``PipelineSettings`` fields as the worker's ``CAI_PIPELINE_*`` variables."""
    return {env_name(k): env_value(v) for k, v in pipeline.items()}


def pipeline_env(name: str) -> dict[str, str]:
    """The recipe's worker settings as ``CAI_PIPELINE_*`` variables, each overridden by the same
    variable in the environment."""
    return {key: os.environ.get(key, value)
            for key, value in worker_env(RECIPES[name].pipeline).items()}
