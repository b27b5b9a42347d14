"""Revise stage: ``revise`` -> the reviser rewrites the answer -> ``critique`` again or, after the
last round, ``sft`` (final revision plus every step) and ``compare`` (initial vs final).

``strategy`` names how revisions are made; "critique-revise" is the paper's. Other strategies
(for example "direct": revise without a written critique, or "context": the principle given as
context to the policy) would be new stage functions that emit the same records.
"""

from __future__ import annotations

import json
import logging

from agents import prompts
from agents.delivery import Output, Stage, handle, stable_seed
from agents.services import Services
from serving.client import GenerationParams
from streams import topics
from streams.records import CompareRecord, CritiqueRecord, ReviseRecord, SFTRecord, now

logger = logging.getLogger(__name__)

NAME = "revise"


def key(record: ReviseRecord) -> str:
    return f"{record.prompt_id}:{record.sample_index}:{record.round}"


def _next(svc: Services, record: ReviseRecord, revision: str, version: int) -> list[Output]:
    steps = json.loads(record.steps_json or "[]")
    # An empty revision, or one that copies a few-shot example, keeps the previous answer.
    rejected = not revision or prompts.copies_example(svc.constitution, revision)
    steps.append({"round": record.round, "principle_id": record.principle_id, "critique": record.critique,
                  "revision": record.response if rejected else revision, "revision_rejected": rejected,
                  "raw_revision": revision if rejected else "", "critic_version": record.critic_version,
                  "reviser_version": version})
    if rejected:
        logger.info("%s round %d: revision rejected (empty or copied an example)", record.prompt_id,
                    record.round)
        revision = record.response
    steps_json = json.dumps(steps, ensure_ascii=False)
    common = {"prompt_id": record.prompt_id, "prompt": record.prompt, "kind": record.kind,
              "source": record.source, "strategy": record.strategy, "policy_version": record.policy_version,
              "seed": record.seed, "constitution_version": svc.constitution.version,
              "prompt_created_at": record.prompt_created_at}
    if record.round < record.rounds:
        return [Output(topics.CRITIQUE, record.prompt_id, CritiqueRecord(
            response=revision, initial_response=record.initial_response, sample_index=record.sample_index,
            round=record.round + 1, rounds=record.rounds, steps_json=steps_json, created_at=now(),
            **common))]
    outs = [Output(topics.SFT, record.prompt_id, SFTRecord(
        response=revision, initial_response=record.initial_response, steps_json=steps_json,
        rounds=record.rounds, sample_index=record.sample_index, critic_version=record.critic_version,
        reviser_version=version, record_id=f"sft:{record.prompt_id}:{record.sample_index}",
        created_at=now(), **common))]
    if svc.settings.compare == "initial-vs-final":
        outs.append(Output(topics.COMPARE, record.prompt_id, CompareRecord(
            response_a=record.initial_response, response_b=revision, pair="initial-vs-final",
            pair_index=record.sample_index, created_at=now(), **common)))
    return outs


async def process(svc: Services, records: list[ReviseRecord]) -> list[list[Output]]:
    s, constitution = svc.settings, svc.constitution
    items = []
    for r in records:
        principle = constitution.critique_by_id.get(r.principle_id) or constitution.draw_critique(
            r.prompt_id, r.round, r.seed, r.sample_index)
        items.append((prompts.revision_prompt(constitution, principle, r.prompt, r.response, r.critique),
                      stable_seed(NAME, key(r), r.seed)))
    params = GenerationParams(max_new_tokens=s.revision_max_new_tokens, temperature=s.critic_temperature,
                              stop=prompts.STOP, chat=False)
    generations = await svc.inference.generate("reviser", items, params)
    return [_next(svc, r, prompts.clean_generation(g[0].text), g[0].model_version)
            for r, g in zip(records, generations)]


STAGE = Stage(NAME, topics.REVISE, ReviseRecord, key, process)


def register(app, svc_ref, source_topic):
    @app.agent(source_topic, name=f"cai-{NAME}")
    async def revise_agent(stream):
        async for batch in stream.take(svc_ref().settings.batch_size, within=svc_ref().settings.batch_within_s):
            await handle(svc_ref(), STAGE, batch)

    return revise_agent
