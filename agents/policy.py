"""Policy stage: ``prompts`` -> answer (k samples) -> ``critique`` (and ``compare`` / ``sft``).

Sample 0 of each prompt starts a critique-revision chain. With ``compare='policy-samples'``
consecutive samples (0,1), (2,3), ... also go to the judge as pairs. Helpful prompts are not
revised unless ``revise_helpful`` is set: their answer goes straight to ``sft`` so training data
stays helpful, as in the paper's SL-CAI mix. With ``preference='contrastive'`` each prompt also
sends an empty "contrastive" pair to ``compare``, where the current policy fills it (strategies.py).
"""

from __future__ import annotations

import logging

from agents import strategies, targets
from agents.delivery import Output, Stage, stable_seed
from agents.services import Services
from serving.requests import GenerationParams
from streams import topics
from streams.records import CompareRecord, CritiqueRecord, PromptRecord, RecordError, SFTRecord, now

logger = logging.getLogger(__name__)

NAME = "policy"


def check(svc: Services, record: PromptRecord) -> None:
    limit = svc.settings.max_prompt_chars
    if len(record.prompt) > limit:
        raise RecordError("PromptRecord", "prompt",
                          f"has {len(record.prompt)} characters, more than "
                          f"max_prompt_chars={limit}",
                          "shorten it or raise CAI_PIPELINE_MAX_PROMPT_CHARS")


def key(record: PromptRecord) -> str:
    return record.prompt_id


def _outputs(svc: Services, record: PromptRecord, samples: list,
             decline: str | None = None) -> list[Output]:
    s = svc.settings
    version = samples[0].model_version
    first = samples[0].text.strip()
    outs: list[Output] = []
    lineage = {"prompt_id": record.prompt_id, "prompt": record.prompt, "kind": record.kind,
               "source": record.source, "policy_version": version, "seed": s.seed,
               "prompt_created_at": record.created_at, "strategy": s.strategy}
    if record.kind == "helpful" and not s.revise_helpful:
        target = targets.training_target(first, record.kind)
        outs.append(Output(topics.SFT, record.prompt_id, SFTRecord(
            response=target.text, initial_response=first, rounds=0, steps_json="[]",
            **targets.record_fields(target, first, "raw_response"),
            constitution_version=svc.constitution.version, record_id=f"sft:{record.prompt_id}:0",
            created_at=now(), **lineage)))
    else:
        outs.append(Output(topics.CRITIQUE, record.prompt_id, CritiqueRecord(
            response=first, initial_response=first, round=1, sample_index=0,
            rounds=strategies.chain_rounds(s.strategy, s.rounds),
            constitution_version=svc.constitution.version, created_at=now(), **lineage)))
    pairs = strategies.pair_source(s)
    if record.kind == "helpful" and s.helpful_pairs:
        outs.append(Output(topics.COMPARE, record.prompt_id, CompareRecord(
            response_a=first, response_b=decline or strategies.bare_decline(svc.constitution),
            pair=strategies.ANSWER_VS_DECLINE, pair_index=0,
            constitution_version=svc.constitution.version, created_at=now(), **lineage)))
        warning = strategies.warning_of(svc.constitution, decline or "")
        if s.warning_pairs and warning:
            outs.append(Output(topics.COMPARE, record.prompt_id, CompareRecord(
                response_a=first, response_b=warning, pair=strategies.ANSWER_VS_WARNING,
                pair_index=0, constitution_version=svc.constitution.version, created_at=now(),
                **lineage)))
    if pairs == strategies.CONTRASTIVE_PAIR:
        outs.append(Output(topics.COMPARE, record.prompt_id, CompareRecord(
            response_a="", response_b="", pair=pairs, pair_index=0,
            constitution_version=svc.constitution.version, created_at=now(), **lineage)))
    if pairs == "policy-samples":
        for pair_index in range(len(samples) // 2):
            a, b = samples[2 * pair_index], samples[2 * pair_index + 1]
            outs.append(Output(topics.COMPARE, record.prompt_id, CompareRecord(
                response_a=a.text.strip(), response_b=b.text.strip(), pair="policy-samples",
                pair_index=pair_index, constitution_version=svc.constitution.version,
                created_at=now(), **lineage)))
    return outs


async def process(svc: Services, records: list[PromptRecord]) -> list[list[Output]]:
    s = svc.settings
    params = GenerationParams(max_new_tokens=s.policy_max_new_tokens, temperature=s.temperature,
                              num_samples=s.num_samples, chat=True)
    items = [(r.prompt, stable_seed(NAME, r.prompt_id, s.seed)) for r in records]
    generations = await svc.inference.generate("policy", items, params)
    for record, samples in zip(records, generations):
        if len(samples) < s.num_samples:
            raise RuntimeError(f"policy returned {len(samples)} samples for {record.prompt_id}, "
                               f"expected num_samples={s.num_samples}")
    declines = await _reasoned_declines(svc, records)
    return [_outputs(svc, r, g, declines.get(r.prompt_id)) for r, g in zip(records, generations)]


async def _reasoned_declines(svc: Services, records: list[PromptRecord]) -> dict[str, str]:
    """With ``helpful_pair_decline='reasoned'``: the policy's own decline of each helpful prompt
    (its decline opening continued greedily), cut after the reason; a prompt whose continuation
    gives no reason keeps the bare decline."""
    s = svc.settings
    helpful = [r for r in records if r.kind == "helpful"]
    if not (s.helpful_pairs and s.helpful_pair_decline == "reasoned" and helpful):
        return {}
    params = GenerationParams(max_new_tokens=32, temperature=0.0, chat=True,
                              response_prefix=svc.constitution.decline_opening)
    generations = await svc.inference.generate(
        "policy", [(r.prompt, stable_seed(NAME, r.prompt_id, s.seed)) for r in helpful], params)
    out = {}
    for record, samples in zip(helpful, generations):
        target = targets.decline_target(samples[0].text.strip())
        if target.text:
            out[record.prompt_id] = target.text
    return out


STAGE = Stage(NAME, topics.PROMPTS, PromptRecord, key, process, check)
