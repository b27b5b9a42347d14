"""The model roles behind one interface, served by Triton or run in this process.

``Inference`` is what the pipeline's stages call (``agents/services.py``): ``generate`` for the
policy, critic and reviser, ``judge`` for the judge; and what a trainer that scores samples
calls: ``score`` for the reward role (the preference model, ``serving/reward_model.py``).
Three implementations:

* ``TritonInference``: the live system, through ``serving.client.InferenceClient``, one request
  per prompt so each prompt keeps its own seed while Triton's dynamic batcher still forms
  batches;
* ``LocalInference``: the same roles on in-process ``serving.textgen`` engines, for ``cai grid``
  (the strategy grid runs the agents' stage functions without Kafka or Triton) and ``cai bench``
  (its in-process modes);
* ``NullInference``: answers at once with no model, so ``cai bench --null-models`` measures the
  stream machinery alone (``cai worker --inference null``); every reward is 0.

Only ``LocalInference`` loads torch, and only when a role is first used.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, Protocol

from core.settings import ROLES
from serving.requests import (
    Generation,
    GenerationParams,
    GenRequest,
    JudgeRequest,
    JudgeResult,
    ScoreResult,
)


class Inference(Protocol):
    async def generate(self, role: str, items: list[tuple[str, int]],
                       params: GenerationParams) -> list[list[Generation]]: ...

    async def judge(self, prompts: list[str], choices: list[str], cot: bool,
                    seed: int | None) -> list[JudgeResult]: ...

    async def score(self, prompts: list[str], answers: list[str]) -> list[ScoreResult]: ...


class TritonInference:
    """``Inference`` on a real ``InferenceClient``."""

    def __init__(self, client) -> None:
        self.client = client

    async def generate(self, role: str, items: list[tuple[str, int]],
                       params: GenerationParams) -> list[list[Generation]]:
        results = await asyncio.gather(*(
            self.client.generate(role, [prompt], replace(params, seed=seed))
            for prompt, seed in items))
        return [r[0] for r in results]

    async def judge(self, prompts: list[str], choices: list[str], cot: bool,
                    seed: int | None) -> list[JudgeResult]:
        return await self.client.judge(prompts, list(choices), cot=cot, chat=False, seed=seed)

    async def score(self, prompts: list[str], answers: list[str]) -> list[ScoreResult]:
        return await self.client.score(prompts, answers)

    async def healthy(self) -> bool:
        """Whether the server answers its liveness check within a few seconds."""
        return await self.client.live()

    async def close(self) -> None:
        await self.client.close()


class NullInference:
    """``Inference`` with no model: every call answers at once with a fixed short text (judge:
    (A) slightly ahead), version 1. What is left of a stage's time is Kafka, Faust, Redis and
    serialisation."""

    def __init__(self, text: str = "I can't help with that, because it could hurt someone.",
                 version: int = 1) -> None:
        self.text = text
        self.version = version

    async def generate(self, role: str, items: list[tuple[str, int]],
                       params: GenerationParams) -> list[list[Generation]]:
        tokens = min(params.max_new_tokens, len(self.text) // 4)
        return [[Generation(text=self.text, prompt_tokens=len(prompt) // 4,
                            completion_tokens=tokens, model_version=self.version,
                            logprob_sum=-float(tokens), finish_reason="eos")
                 for _ in range(params.num_samples)] for prompt, _ in items]

    async def judge(self, prompts: list[str], choices: list[str], cot: bool,
                    seed: int | None) -> list[JudgeResult]:
        probs = [0.6] + [0.4 / (len(choices) - 1)] * (len(choices) - 1)
        return [JudgeResult(probs=probs, model_version=self.version) for _ in prompts]

    async def score(self, prompts: list[str], answers: list[str]) -> list[ScoreResult]:
        return [ScoreResult(reward=0.0, model_version=self.version) for _ in prompts]

    async def close(self) -> None:
        return None


class LocalInference:
    """``Inference`` on in-process ``serving.textgen`` engines instead of Triton.

    Every role starts on ``base_source``; the policy role serves whatever ``set_policy`` last
    installed, with a version number like Triton's. Roles with the same weights share one
    engine. ``threads``, ``dtype`` and ``prefix_min_tokens`` are the engine's. The reward role
    is a ``RewardModel`` on ``reward_source`` (the base model with a fresh seeded head, until
    ``set_reward`` installs a trained one), loaded on first use.
    """

    def __init__(self, base_source: str, threads: int | None = None, dtype: str = "float32",
                 prefix_min_tokens: int = 32) -> None:
        self.threads = threads
        self.dtype = dtype
        self.prefix_min_tokens = prefix_min_tokens
        self.sources = {role: base_source for role in ROLES}
        self.versions = {role: 1 for role in ROLES}
        self._loaded: dict[str, Any] = {}
        self.tokens = 0
        self.reward_source = base_source
        self.reward_version = 1
        self._reward: Any = None

    def set_policy(self, source: str, version: int) -> None:
        self.sources["policy"], self.versions["policy"] = str(source), version
        for stale in set(self._loaded) - set(self.sources.values()):
            del self._loaded[stale]

    def set_reward(self, source: str, version: int) -> None:
        """Serve the reward model saved in ``source`` as reward ``version`` from the next call."""
        self.reward_source, self.reward_version = str(source), version
        self._reward = None

    def reward_model(self):
        """The ``RewardModel`` serving the reward role (loaded on first use)."""
        if self._reward is None:
            import torch

            from serving.reward_model import RewardModel

            if self.threads:
                torch.set_num_threads(int(self.threads))
            self._reward = RewardModel.from_pretrained(self.reward_source,
                                                       dtype=getattr(torch, self.dtype)).eval()
        return self._reward

    def generator(self, role: str):
        """The engine serving ``role`` (loaded on first use)."""
        from serving.textgen import TextGenerator

        source = self.sources[role]
        if source not in self._loaded:
            self._loaded[source] = TextGenerator(source, threads=self.threads, dtype=self.dtype,
                                                 prefix_min_tokens=self.prefix_min_tokens)
        return self._loaded[source]

    async def generate(self, role: str, items: list[tuple[str, int]],
                       params: GenerationParams) -> list[list[Generation]]:
        requests = [GenRequest(prompt=text, max_new_tokens=params.max_new_tokens,
                               temperature=params.temperature, top_p=params.top_p, seed=seed,
                               stop=tuple(params.stop), num_samples=params.num_samples,
                               chat=params.chat, system=params.system,
                               response_prefix=params.response_prefix)
                    for text, seed in items]
        results = self.generator(role).generate(requests)
        self.tokens += sum(s.completion_tokens for samples in results for s in samples)
        return [[Generation(text=s.text, prompt_tokens=s.prompt_tokens,
                            completion_tokens=s.completion_tokens,
                            model_version=self.versions[role], logprob_sum=s.logprob_sum,
                            finish_reason=s.finish_reason) for s in samples] for samples in results]

    async def judge(self, prompts: list[str], choices: list[str], cot: bool,
                    seed: int | None) -> list[JudgeResult]:
        outputs = self.generator("judge").judge([
            JudgeRequest(prompt=p, choices=tuple(choices), cot=cot, chat=False, seed=seed)
            for p in prompts])
        return [JudgeResult(probs=o.probs, model_version=self.versions["judge"],
                            reasoning=o.reasoning, logprobs=o.logprobs) for o in outputs]

    async def score(self, prompts: list[str], answers: list[str]) -> list[ScoreResult]:
        rewards = self.reward_model().score(prompts, answers)
        return [ScoreResult(reward=r, model_version=self.reward_version) for r in rewards]
