"""Online RL (trainer mode ``rloo``): the samples a round learns from, and the preference model's
held-out pairs.

Each round (``trainer/loop.py``):

1. the preference model learns from the round's preference pairs (soft Bradley-Terry), is
   checked on pairs it never trains on (``is_held_out``: a stable hash of the prompt id), and
   is published to Triton as the next version of the ``reward`` role;
2. ``Rollouts.collect`` has the serving policy sample k answers to each of the round's prompts
   and the served reward model score them, both through ``serving.inference`` (Triton live, the
   same roles in-process in ``cai grid``); each answer's advantage is its reward minus the mean
   of the other k-1 (``trainer.losses.rloo_advantages``);
3. the samples go out on the ``rl-samples`` topic, and the policy trains on them
   (``PolicyLearner.rl_step``) beside the SFT revisions, then faces the same dev gate as any round.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from serving.requests import GenerationParams
from trainer.data import PreferenceExample, RLSample
from trainer.losses import rloo_advantages

logger = logging.getLogger(__name__)


def is_held_out(prompt_id: str, share: float) -> bool:
    """Whether a pair of this prompt is kept from the preference model's training: the same
    answer in every process and after every restart."""
    digest = hashlib.sha256(f"pm-holdout:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def split_pairs(pairs: list[PreferenceExample], share: float
                ) -> tuple[list[PreferenceExample], list[PreferenceExample]]:
    """(pairs to train on, held-out pairs)."""
    held = [p for p in pairs if is_held_out(p.prompt_id, share)]
    return [p for p in pairs if not is_held_out(p.prompt_id, share)], held


@dataclass(frozen=True)
class RolloutPrompt:
    prompt_id: str
    prompt: str
    kind: str


def round_prompts(examples: list) -> list[RolloutPrompt]:
    """The distinct prompts of a round's examples (SFT and preference), in arrival order."""
    seen: dict[str, RolloutPrompt] = {}
    for e in examples:
        seen.setdefault(e.prompt_id, RolloutPrompt(e.prompt_id, e.prompt, e.kind))
    return list(seen.values())


class Rollouts:
    """Samples answers from the serving policy and scores them with the served reward model.

    ``connect`` returns an ``Inference`` (``serving.inference``); it is called once per collection
    and closed after it when ``close`` is set (a Triton client belongs to the event loop that made
    it), while ``cai grid`` hands the same in-process engines every time.
    """

    def __init__(self, connect: Callable[[], object], close: bool = True):
        self.connect = connect
        self.close = close

    def collect(self, prompts: list[RolloutPrompt], k: int, temperature: float,
                max_new_tokens: int, seed: int) -> list[RLSample]:
        """k samples per prompt, scored, with leave-one-out advantages; prompts whose k rewards
        are all equal teach nothing and are left out."""
        if not prompts:
            return []
        return asyncio.run(self._collect(prompts, k, temperature, max_new_tokens, seed))

    async def _collect(self, prompts, k, temperature, max_new_tokens, seed) -> list[RLSample]:
        inference = self.connect()
        try:
            # top_p 1: the loss's ratio reads the policy's full distribution, so sampling
            # should not cut its tail. (The ratio is taken at temperature 1 while the answers
            # were sampled at ``temperature``: an approximation that the clip bounds.)
            params = GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature,
                                      top_p=1.0, num_samples=k)
            items = [(p.prompt, seed * 1_000_003 + i * k) for i, p in enumerate(prompts)]
            generations = await inference.generate("policy", items, params)
            flat = [(p, g) for p, gens in zip(prompts, generations, strict=True) for g in gens]
            scores = await inference.score([p.prompt for p, _ in flat], [g.text for _, g in flat])
        finally:
            if self.close and hasattr(inference, "close"):
                await inference.close()
        rewards = torch.tensor([s.reward for s in scores], dtype=torch.float32).view(-1, k)
        advantages = rloo_advantages(rewards)
        samples = []
        for index, ((prompt, generation), score) in enumerate(zip(flat, scores, strict=True)):
            group, sample = divmod(index, k)
            samples.append(RLSample(
                prompt_id=prompt.prompt_id, prompt=prompt.prompt, answer=generation.text,
                reward=score.reward, advantage=float(advantages[group, sample]),
                kind=prompt.kind, sample=sample, truncated=generation.finish_reason == "length",
                completion_tokens=generation.completion_tokens,
                policy_version=generation.model_version, reward_version=score.model_version))
        return samples


def informative(samples: list[RLSample]) -> list[RLSample]:
    """The samples of prompts whose answers' rewards differ (an all-equal group has zero
    advantage everywhere: only the KL term would move the policy)."""
    groups: dict[str, list[RLSample]] = {}
    for s in samples:
        groups.setdefault(s.prompt_id, []).append(s)
    return [s for group in groups.values() if any(abs(x.advantage) > 1e-6 for x in group)
            for s in group]


def sample_metrics(samples: list[RLSample]) -> dict[str, float]:
    """What a round's samples looked like: count, mean reward (all, harmful, helpful), mean
    tokens and the share cut at the token limit."""
    if not samples:
        return {"rl/samples": 0.0}
    out = {"rl/samples": float(len(samples)),
           "rl/reward_mean": sum(s.reward for s in samples) / len(samples),
           "rl/tokens_mean": sum(s.completion_tokens for s in samples) / len(samples),
           "rl/truncated": sum(s.truncated for s in samples) / len(samples)}
    for kind in ("harmful", "helpful"):
        chosen = [s.reward for s in samples if s.kind == kind]
        if chosen:
            out[f"rl/reward_{kind}"] = sum(chosen) / len(chosen)
    return out


def sample_records(samples: list[RLSample], trainer_round: int) -> list:
    """The samples as ``RLSampleRecord``s for the ``rl-samples`` topic."""
    from streams.records import RLSampleRecord, stamp

    return [stamp(RLSampleRecord(
        prompt_id=s.prompt_id, prompt=s.prompt, kind=s.kind, answer=s.answer, sample=s.sample,
        reward=s.reward, advantage=s.advantage, completion_tokens=s.completion_tokens,
        policy_version=s.policy_version, reward_version=s.reward_version,
        trainer_round=trainer_round)) for s in samples]
