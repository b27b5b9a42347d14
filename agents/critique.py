"""Critique stage: ``critique`` -> the critic critiques the answer under one drawn principle ->
``revise``.

The principle is drawn from the constitution with a seed made of (prompt id, sample, seed), one
fresh principle per round, and recorded as ``principle_id``; a replay draws the same one.
Records of strategies without a critique ("direct", "context") pass through with an empty
critique and no critic call (agents/strategies.py).
"""

from __future__ import annotations

import logging

from agents import prompts, strategies
from agents.delivery import Output, Stage, stable_seed
from agents.services import Services
from serving.requests import GenerationParams
from streams import topics
from streams.records import CritiqueRecord, ReviseRecord, now

logger = logging.getLogger(__name__)

NAME = "critique"


def key(record: CritiqueRecord) -> str:
    return f"{record.prompt_id}:{record.sample_index}:{record.round}"


def _revise(svc: Services, record: CritiqueRecord, principle_id: str, critique: str,
            version: int) -> Output:
    fields = {k: getattr(record, k) for k in (
        "prompt_id", "prompt", "response", "initial_response", "kind", "source", "sample_index",
        "round", "rounds", "steps_json", "strategy", "policy_version", "seed", "prompt_created_at")}
    return Output(topics.REVISE, record.prompt_id, ReviseRecord(
        critique=critique, principle_id=principle_id, critic_version=version,
        constitution_version=svc.constitution.version, created_at=now(), **fields))


async def process(svc: Services, records: list[CritiqueRecord]) -> list[list[Output]]:
    s, constitution = svc.settings, svc.constitution
    critiqued = [r for r in records if strategies.uses_critic(r.strategy)]
    principles = [constitution.draw_critique(r.prompt_id, r.round, r.seed,
                                             r.sample_index) for r in critiqued]
    items = [(prompts.critique_prompt(constitution, p, r.prompt, r.response),
              stable_seed(NAME, key(r), r.seed)) for r, p in zip(critiqued, principles)]
    params = GenerationParams(max_new_tokens=s.critique_max_new_tokens,
                              temperature=s.critic_temperature,
                              stop=prompts.STOP, chat=False)
    generations = await svc.inference.generate("critic", items, params) if items else []
    done = {id(r): _revise(svc, r, p.id, prompts.clean_generation(g[0].text), g[0].model_version)
            for r, p, g in zip(critiqued, principles, generations)}
    for r in records:
        if id(r) not in done:  # no critique under this strategy: pass the principle on
            principle_id = strategies.principle_for(constitution, r.strategy, r.prompt_id,
                                                    r.round, r.seed, r.sample_index)
            done[id(r)] = _revise(svc, r, principle_id, "", 0)
    return [[done[id(r)]] for r in records]


STAGE = Stage(NAME, topics.CRITIQUE, CritiqueRecord, key, process)
