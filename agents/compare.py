"""Compare stage: ``compare`` -> the judge picks (A) or (B) -> ``preferences`` with a soft label.

For each pair, ``judge_principles`` comparison principles are drawn (seeded); the judge sees
every principle in both orders, so position bias cancels out. ``p_chosen`` is the mean
probability that the chosen answer is better; ``orders_agree`` says whether both orders picked
the same answer for every principle. With chain-of-thought judging the probabilities are
clamped to 40-60% (the paper's finding that CoT labels are overconfident).
"""

from __future__ import annotations

import json
import logging

from agents import prompts
from agents.delivery import Output, Stage, handle, stable_seed
from agents.services import Services
from streams import topics
from streams.records import CompareRecord, PreferenceRecord, now

logger = logging.getLogger(__name__)

NAME = "compare"
COT_CLAMP = (0.4, 0.6)


def key(record: CompareRecord) -> str:
    return f"{record.prompt_id}:{record.pair}:{record.pair_index}"


def _first_wins(probs: list[float]) -> float:
    total = probs[0] + probs[1]
    return 0.5 if total <= 0 else probs[0] / total


def label(p_a_by_order: list[tuple[float, float]], cot: bool = False) -> tuple[float, bool]:
    """(P(A better), orders_agree) from per-principle (P(A) shown first, P(A) shown second)."""
    values = []
    agree = True
    for shown_first, shown_second in p_a_by_order:
        if cot:
            shown_first = min(max(shown_first, COT_CLAMP[0]), COT_CLAMP[1])
            shown_second = min(max(shown_second, COT_CLAMP[0]), COT_CLAMP[1])
        values += [shown_first, shown_second]
        agree &= (shown_first >= 0.5) == (shown_second >= 0.5)
    return sum(values) / len(values), agree


async def process(svc: Services, records: list[CompareRecord]) -> list[list[Output]]:
    s, constitution = svc.settings, svc.constitution
    plan = []      # per record: its principles
    questions = []
    for r in records:
        principles = constitution.draw_comparisons(r.prompt_id, r.pair_index, r.seed, s.judge_principles)
        plan.append(principles)
        for p in principles:
            questions.append(prompts.comparison_prompt(constitution, p, r.prompt, r.response_a, r.response_b))
            questions.append(prompts.comparison_prompt(constitution, p, r.prompt, r.response_b, r.response_a))
    results = await svc.inference.judge(questions, list(prompts.JUDGE_CHOICES), s.judge_cot,
                                        stable_seed(NAME, s.seed))
    outputs, cursor = [], 0
    for r, principles in zip(records, plan):
        pairs, versions = [], set()
        for _ in principles:
            straight, swapped = results[cursor], results[cursor + 1]
            cursor += 2
            pairs.append((_first_wins(straight.probs), 1.0 - _first_wins(swapped.probs)))
            versions.update((straight.model_version, swapped.model_version))
        p_a, agree = label(pairs, s.judge_cot)
        a_wins = p_a >= 0.5
        outputs.append([Output(topics.PREFERENCES, r.prompt_id, PreferenceRecord(
            prompt_id=r.prompt_id, prompt=r.prompt,
            chosen=r.response_a if a_wins else r.response_b,
            rejected=r.response_b if a_wins else r.response_a,
            p_chosen=p_a if a_wins else 1.0 - p_a, orders_agree=agree,
            principle_ids=",".join(p.id for p in principles), policy_version=r.policy_version,
            judge_version=max(versions), strategy=r.strategy, pair=r.pair, kind=r.kind, source=r.source,
            constitution_version=constitution.version, probs_json=json.dumps(pairs), seed=r.seed,
            prompt_created_at=r.prompt_created_at, record_id=f"pref:{key(r)}", created_at=now()))])
    return outputs


STAGE = Stage(NAME, topics.COMPARE, CompareRecord, key, process)


def register(app, svc_ref, source_topic):
    @app.agent(source_topic, name=f"cai-{NAME}")
    async def compare_agent(stream):
        async for batch in stream.take(svc_ref().settings.batch_size, within=svc_ref().settings.batch_within_s):
            await handle(svc_ref(), STAGE, batch)

    return compare_agent
