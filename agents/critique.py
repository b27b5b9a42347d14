"""Critique stage: ``critique`` -> the critic critiques the answer under one drawn principle -> ``revise``.

The principle is drawn from the constitution with a seed made of (prompt id, sample, seed), one
fresh principle per round, and recorded as ``principle_id``; a replay draws the same one.
"""

from __future__ import annotations

import logging

from agents import prompts
from agents.delivery import Output, Stage, handle, stable_seed
from agents.services import Services
from serving.client import GenerationParams
from streams import topics
from streams.records import CritiqueRecord, ReviseRecord, now

logger = logging.getLogger(__name__)

NAME = "critique"


def key(record: CritiqueRecord) -> str:
    return f"{record.prompt_id}:{record.sample_index}:{record.round}"


async def process(svc: Services, records: list[CritiqueRecord]) -> list[list[Output]]:
    s, constitution = svc.settings, svc.constitution
    principles = [constitution.draw_critique(r.prompt_id, r.round, r.seed, r.sample_index) for r in records]
    items = [(prompts.critique_prompt(constitution, p, r.prompt, r.response),
              stable_seed(NAME, key(r), r.seed)) for r, p in zip(records, principles)]
    params = GenerationParams(max_new_tokens=s.critique_max_new_tokens, temperature=s.critic_temperature,
                              stop=prompts.STOP, chat=False)
    generations = await svc.inference.generate("critic", items, params)
    outputs = []
    for record, principle, samples in zip(records, principles, generations):
        fields = {k: getattr(record, k) for k in (
            "prompt_id", "prompt", "response", "initial_response", "kind", "source", "sample_index",
            "round", "rounds", "steps_json", "strategy", "policy_version", "seed", "prompt_created_at")}
        outputs.append([Output(topics.REVISE, record.prompt_id, ReviseRecord(
            critique=prompts.clean_generation(samples[0].text), principle_id=principle.id,
            critic_version=samples[0].model_version, constitution_version=constitution.version,
            created_at=now(), **fields))])
    return outputs


STAGE = Stage(NAME, topics.CRITIQUE, CritiqueRecord, key, process)


def register(app, svc_ref, source_topic):
    @app.agent(source_topic, name=f"cai-{NAME}")
    async def critique_agent(stream):
        async for batch in stream.take(svc_ref().settings.batch_size, within=svc_ref().settings.batch_within_s):
            await handle(svc_ref(), STAGE, batch)

    return critique_agent
