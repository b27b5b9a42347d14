"""Revise stage: ``revise`` -> the reviser rewrites the answer -> ``critique`` again or, after the
last round, ``sft`` (final revision plus every step) and ``compare`` (initial vs final).

``strategy`` (carried on the record) names how revisions are made: "critique-revise" (the
paper's), "direct" (no critique) or "context" (the current policy answers again with the
constitution as system prompt); agents/strategies.py builds the call for each.
"""

from __future__ import annotations

import json
import logging

from agents import prompts, strategies, targets
from agents.delivery import Output, Stage, stable_seed
from agents.services import Services
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
    steps.append({"round": record.round, "strategy": record.strategy,
                  "principle_id": record.principle_id,
                  "critique": record.critique,
                  "revision": record.response if rejected else revision,
                  "revision_rejected": rejected,
                  "raw_revision": revision if rejected else "",
                  "critic_version": record.critic_version,
                  "reviser_version": version})
    if rejected:
        logger.info("%s round %d: revision rejected (empty or copied an example)", record.prompt_id,
                    record.round)
        revision = record.response
    steps_json = json.dumps(steps, ensure_ascii=False)
    common = {"prompt_id": record.prompt_id, "prompt": record.prompt, "kind": record.kind,
              "source": record.source, "strategy": record.strategy,
              "policy_version": record.policy_version,
              "seed": record.seed, "constitution_version": svc.constitution.version,
              "prompt_created_at": record.prompt_created_at}
    if record.round < record.rounds:
        return [Output(topics.CRITIQUE, record.prompt_id, CritiqueRecord(
            response=revision, initial_response=record.initial_response,
            sample_index=record.sample_index,
            round=record.round + 1, rounds=record.rounds, steps_json=steps_json, created_at=now(),
            **common))]
    taught = strategies.sft_answer(record.strategy, record.initial_response, revision)
    if (svc.settings.skip_settled_declines and record.kind != "helpful"
            and strategies.declines_with_reason(record.initial_response)):
        target = targets.Target("", targets.DROPPED, targets.SETTLED)
    else:
        target = targets.training_target(taught, record.kind)
    outs = [Output(topics.SFT, record.prompt_id, SFTRecord(
        response=target.text, initial_response=record.initial_response, steps_json=steps_json,
        **targets.record_fields(target, taught, "raw_response"),
        rounds=record.rounds, sample_index=record.sample_index,
        critic_version=record.critic_version,
        reviser_version=version, record_id=f"sft:{record.prompt_id}:{record.sample_index}",
        created_at=now(), **common))]
    if strategies.pair_source(svc.settings) == "initial-vs-final":
        outs.append(Output(topics.COMPARE, record.prompt_id, CompareRecord(
            response_a=record.initial_response, response_b=revision, pair="initial-vs-final",
            pair_index=record.sample_index, created_at=now(), **common)))
    return outs


async def process(svc: Services, records: list[ReviseRecord]) -> list[list[Output]]:
    s, constitution = svc.settings, svc.constitution
    calls = []
    for r in records:
        principle = None if r.strategy == "context" else (
            constitution.critique_by_id.get(r.principle_id)
            or constitution.draw_critique(r.prompt_id, r.round, r.seed, r.sample_index))
        call = strategies.revision_call(constitution, s, r.strategy, principle, r.prompt,
                                        r.response, r.critique,
                                       r.kind)
        calls.append((call, stable_seed(NAME, key(r), r.seed)))
    results = await strategies.run_calls(svc.inference, calls)
    return [_next(svc, r, strategies.clean_output(call, g.text), g.model_version)
            for r, (call, _), g in zip(records, calls, results)]


STAGE = Stage(NAME, topics.REVISE, ReviseRecord, key, process)
