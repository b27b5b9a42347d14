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


_CONTEXT_PIPELINE = {"strategy": "context", "preference": "revision-over-initial",
                     "compare": "initial-vs-final", "helpful_pairs": True,
                     "context_placement": "user-suffix", "context_temperature": 0,
                     "context_opening": True, "policy_max_new_tokens": 64,
                     "helpful_pair_decline": "reasoned", "reason_pairs": True,
                     "warning_pairs": True, "stop_pairs": True}
_CONTEXT_TRAINER = {"lr": 1e-3, "lr_schedule": "linear", "epochs": 6, "max_length": 256,
                    "gate_every_epochs": 4, "gate_benign_max_new_tokens": 64,
                    "helpful_mix": 0.7, "replay_helpful": 48, "replay_harmful": 48}

RECIPES: dict[str, Recipe] = {
    # Context distillation (docs/strategies.md): the policy answers red-team prompts again with
    # the constitution's reminder after the request, greedily, its answer opened by the
    # constitution's decline opening so that it writes the reason itself; the cleaned decline
    # (agents/targets.py: it ends after the reason) is the SFT target, and is preferred over the
    # policy's plain answer (DPO). Helpful prompts give their answer as SFT target and a pair
    # preferring it over the policy's own reasoned decline of them (helpful_pair_decline), so
    # the line between the two is learnt by meaning: with the bare "I can't help with that." as
    # the rejected side, nothing taught that the decline's reason ("Doing this could potentially
    # harm ...") does not belong in a benign answer, and it leaked into them (docs/results-log.md,
    # "warned off"). Rejecting the reasoned decline there also taught declines without a reason
    # (explains-why fell from 90-100% to 68-84%), so each red-team target that declines with
    # its reason is also preferred over the bare decline (reason_pairs): the two sides share
    # the decline, so the pair moves only what follows it. That alone made the reason leak into
    # benign answers as a warning ("... doing so could potentially harm someone."), so each
    # helpful answer is also preferred over the reason of its decline alone (warning_pairs).
    # A cleaned target ends after the reason, but never showed the policy its own continuation,
    # and trained policies still went on after the reason to comply ("Here's a possible way:
    # ..."), so each target cut from such an answer is also preferred over that whole answer
    # (stop_pairs): the two share the decline and reason, so only stopping there moves.
    # The trainer interleaves SFT and DPO in every epoch at a falling learning rate and checks the
    # dev gate after epochs 4 and 6, keeping the best passing one: one round on the same data
    # otherwise swung between declining few prompts and most benign ones from epoch to epoch
    # (docs/results-log.md, 2026-11-28). The logged live rounds of this recipe kept epoch 6 or 4,
    # and a check costs about a minute on 2 cores (same log, 2026-11-29); its benign answers
    # stop at 64 tokens, enough to show a decline or a warning, to leave the round more time.
    # Helpful examples carry 70% of the SFT loss: with an even split a second round from a
    # trained policy over-refused at every epoch, with 70% the grid's second round passed the
    # gate (same log, "helpful_mix"). Each round also trains again on the helpful examples of
    # the promoted rounds before it (replay_helpful): a later round otherwise saw only its own
    # benign prompts against the decline targets, and over-refused from its first epoch (same
    # log, "replay"). The red-team examples of promoted rounds are replayed too
    # (replay_harmful): a round otherwise learnt the decline from its own 12 red-team prompts
    # only, and a later round could lose held-out ground that the one before had won (same log,
    # "replaying red-team examples").
    "context-distillation": Recipe(pipeline=_CONTEXT_PIPELINE, trainer=_CONTEXT_TRAINER),
    # RL-CAI online (trainer/rl.py): the same data as context distillation, but the preference
    # pairs teach a preference model, served as the Triton role 'reward', and the policy learns
    # by RLOO from k answers it samples per prompt and the served model scores, beside the SFT
    # revisions; the gate also rejects a round whose dev answers turn to boilerplate or change
    # length by more than half (the signs of a gamed reward model).
    "rl": Recipe(pipeline=_CONTEXT_PIPELINE, trainer={
        **_CONTEXT_TRAINER, "mode": "rloo", "rl_samples": 4, "rl_epochs": 2,
        "gate_boilerplate_tolerance": 0.2, "gate_length_tolerance": 0.5}),
    # The paper's SL-CAI + RL-CAI data: critique -> revise rounds, the judge's soft labels.
    "paper": Recipe(pipeline={"strategy": "critique-revise", "preference": "judge"}),
}
DEFAULT_RECIPE = "context-distillation"
# Prompts `cai run` feeds per round by default (half benign: ``cai run --benign-share``); the
# trainer's round settings follow from it. 30 a round with 18 benign did not fit 30 minutes
# with six epochs, and five epochs left round 1 short of the decline (docs/results-log.md,
# "Runs BA-CD").
RUN_PROMPTS = 24


def trainer_fields(name: str, prompts: int = RUN_PROMPTS) -> dict[str, Any]:
    """``TrainerConfig`` fields of a live run of recipe ``name`` feeding ``prompts`` prompts a
    round: the round settings, then the recipe's own fields."""
    return {
        # A round waits for the pipeline to drain (cai run feeds a round's prompts at once);
        # K and T only guard against a pipeline that never drains.
        "round_every_examples": 4 * prompts, "round_every_seconds": 900.0,
        "round_min_examples": max(1, prompts // 3),
        # The dev gate decides promotion; no examples are held back from the stream for a probe.
        "probe_size": 0,
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
