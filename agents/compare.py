"""Compare stage: ``compare`` -> the judge picks (A) or (B) -> ``preferences`` with a soft label.

For each pair, ``judge_principles`` comparison principles are drawn (seeded); the judge sees
every principle in both orders, so position bias cancels out. ``p_chosen`` is the mean
probability that the chosen answer is better; ``orders_agree`` says whether both orders picked
the same answer for every principle. With chain-of-thought judging the probabilities are
clamped to 40-60% (the paper's finding that CoT labels are overconfident).

``preference`` (agents/strategies.py) changes how labels are made: "revision-over-initial"
gives the final revision a hard label with no judge call; "contrastive" pairs arrive empty and
are filled here by the current policy (toward / away from the constitution), labelled by
construction or, with ``contrastive_label='judge'``, by the judge. With ``reason_pairs`` a
red-team prompt's hard label also yields a "reason-over-bare" pair (``_reason_pair``), and
with ``stop_pairs`` a "stop-over-going-on" pair when its revision declined and then complied
(``_stop_pair``); "answer-vs-warning" pairs (``warning_pairs``) are labelled by construction like
"answer-vs-decline".
"""

from __future__ import annotations

import json
import logging

from agents import prompts, strategies, targets
from agents.delivery import Output, Stage, stable_seed
from agents.services import Services
from scoring.classify import classify
from streams import topics
from streams.records import (
    ANSWER_OVER_DECLINE,
    ANSWER_OVER_WARNING,
    REASON_OVER_BARE,
    STOP_OVER_GOING_ON,
    CompareRecord,
    PreferenceRecord,
    now,
)

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


async def _judge(svc: Services, pairs: list[tuple[CompareRecord, str, str]]) -> list[dict]:
    """Soft labels for (record, first, second): P(first better), agreement, principles, version."""
    s, constitution = svc.settings, svc.constitution
    plan = []      # per pair: its principles
    questions = []
    for r, first, second in pairs:
        principles = constitution.draw_comparisons(r.prompt_id, r.pair_index, r.seed,
                                                   s.judge_principles)
        plan.append(principles)
        for p in principles:
            questions.append(prompts.comparison_prompt(constitution, p, r.prompt, first, second))
            questions.append(prompts.comparison_prompt(constitution, p, r.prompt, second, first))
    results = await svc.inference.judge(questions, list(prompts.JUDGE_CHOICES), s.judge_cot,
                                        stable_seed(NAME, s.seed)) if questions else []
    labels, cursor = [], 0
    for principles in plan:
        probs, versions = [], set()
        for _ in principles:
            straight, swapped = results[cursor], results[cursor + 1]
            cursor += 2
            probs.append((_first_wins(straight.probs), 1.0 - _first_wins(swapped.probs)))
            versions.update((straight.model_version, swapped.model_version))
        p_first, agree = label(probs, s.judge_cot)
        labels.append({"p_first": p_first, "orders_agree": agree, "probs": probs,
                       "principle_ids": ",".join(p.id for p in principles),
                       "judge_version": max(versions)})
    return labels


def _preference(svc: Services, r: CompareRecord, chosen: str, rejected: str, p_chosen: float,
                strategy: str, judged: dict | None = None,
                policy_version: int | None = None, pair: str | None = None) -> Output:
    """The preference record of ``r``'s pair, its chosen side cleaned (``targets``). ``pair``
    names a second pair made from the same compare record (its own record id)."""
    judged = judged or {}
    target = targets.training_target(chosen, r.kind)
    return Output(topics.PREFERENCES, r.prompt_id, PreferenceRecord(
        prompt_id=r.prompt_id, prompt=r.prompt, chosen=target.text, rejected=rejected,
        p_chosen=p_chosen, **targets.record_fields(target, chosen, "raw_chosen"),
        orders_agree=judged.get("orders_agree", True),
        principle_ids=judged.get("principle_ids", ""),
        policy_version=r.policy_version if policy_version is None else policy_version,
        judge_version=judged.get("judge_version", 0), strategy=strategy,
        revision_strategy=r.strategy if r.pair == "initial-vs-final" else "",
        pair=pair or r.pair,
        kind=r.kind,
        source=r.source, constitution_version=svc.constitution.version,
        probs_json=json.dumps(judged.get("probs", [])), seed=r.seed,
        prompt_created_at=r.prompt_created_at,
        record_id=(f"pref:{key(r)}" if pair is None
                   else f"pref:{r.prompt_id}:{pair}:{r.pair_index}"),
        created_at=now()))


def _reason_pair(svc: Services, r: CompareRecord, chosen: str) -> list[Output]:
    """With ``reason_pairs``: the red-team target ``chosen`` over the bare decline, when the
    target is a refusal that begins with that decline and gives its reason (so the two sides
    differ only in what follows it); else nothing."""
    if not svc.settings.reason_pairs or r.kind == "helpful":
        return []
    cleaned = targets.training_target(chosen, r.kind).text
    verdict = classify(cleaned)
    if not (verdict.refused and verdict.explains_why
            and strategies.warning_of(svc.constitution, cleaned)):
        return []
    return [_preference(svc, r, chosen, strategies.bare_decline(svc.constitution), 1.0,
                        REASON_OVER_BARE, pair=REASON_OVER_BARE)]


def _stop_pair(svc: Services, r: CompareRecord, chosen: str) -> list[Output]:
    """With ``stop_pairs``: the red-team target ``chosen``, cut after its reason, over the whole
    of it as the policy wrote it, when that declined and then went on to comply; else
    nothing."""
    if not svc.settings.stop_pairs or r.kind == "helpful":
        return []
    target = targets.training_target(chosen, r.kind)
    verdict = classify(chosen)
    if target.action != targets.CUT or not (verdict.refused and verdict.complied):
        return []
    return [_preference(svc, r, chosen, chosen.strip(), 1.0, STOP_OVER_GOING_ON,
                        pair=STOP_OVER_GOING_ON)]


async def process(svc: Services, records: list[CompareRecord]) -> list[list[Output]]:
    s = svc.settings
    outputs: dict[int, list[Output]] = {}
    judged: list[tuple[CompareRecord, str, str]] = []
    contrastive = [r for r in records if r.pair == strategies.CONTRASTIVE_PAIR]
    for r in records:
        if r.pair == strategies.CONTRASTIVE_PAIR:
            continue
        if r.pair in (strategies.ANSWER_VS_DECLINE, strategies.ANSWER_VS_WARNING):
            outputs[id(r)] = [_preference(
                svc, r, r.response_a, r.response_b, 1.0,
                ANSWER_OVER_DECLINE if r.pair == strategies.ANSWER_VS_DECLINE
                else ANSWER_OVER_WARNING)]
            continue
        if s.preference == "revision-over-initial" and r.pair == "initial-vs-final":
            hard = strategies.hard_label(r.response_a, r.response_b)
            outputs[id(r)] = ([] if hard is None
                              else [_preference(svc, r, *hard, strategy=s.preference),
                                    *_reason_pair(svc, r, hard[0]),
                                    *_stop_pair(svc, r, hard[0])])
        else:
            judged.append((r, r.response_a, r.response_b))

    # Contrastive pairs: the current policy answers toward and away from the constitution.
    if contrastive:
        calls = []
        for r in contrastive:
            toward, away = strategies.contrast_calls(svc.constitution, s, r.prompt, r.kind)
            calls += [(toward, stable_seed(NAME, key(r), "toward", r.seed)),
                      (away, stable_seed(NAME, key(r), "away", r.seed))]
        answers = await strategies.run_calls(svc.inference, calls)
        made = [(r, answers[2 * i].text.strip(), answers[2 * i + 1].text.strip())
                for i, r in enumerate(contrastive)]
        versions = [answers[2 * i].model_version for i in range(len(contrastive))]
        rescored = await _judge(svc, made) if s.contrastive_label == "judge" else [None] * len(made)
        for (r, toward, away), version, judgement in zip(made, versions, rescored):
            pair = ((toward, away) if judgement is not None
                    else strategies.contrastive_pair(r.kind, toward, away))
            if pair is None:
                logger.info("contrastive pair of %s dropped: its toward answer refuses a helpful "
                            "prompt", key(r))
                outputs[id(r)] = []
                continue
            p = strategies.contrastive_label(
                judgement["p_first"] if judgement is not None else None)
            outputs[id(r)] = [_preference(svc, r, *pair, p, "contrastive", judgement,
                                          policy_version=version)]

    for (r, first, second), j in zip(judged, await _judge(svc, judged) if judged else []):
        a_wins = j["p_first"] >= 0.5
        outputs[id(r)] = [_preference(svc, r, first if a_wins else second,
                                      second if a_wins else first,
                                      j["p_first"] if a_wins else 1.0 - j["p_first"], "judge", j)]
    return [outputs[id(r)] for r in records]


STAGE = Stage(NAME, topics.COMPARE, CompareRecord, key, process)
