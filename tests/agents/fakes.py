"""In-memory stand-ins for Redis, Triton and the topic sender, used by the agent unit tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from serving.requests import Generation, JudgeResult


class DataError(Exception):
    """redis-py's name for a value it cannot encode (a permanent error)."""


class FakeRedis:
    """The handful of redis.asyncio commands the ledger uses, with expiry."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.expiry: dict[str, float] = {}
        self.fail_next = 0
        self.unencodable: set[str] = set()  # keys holding one of these cannot be sent

    def _encode(self, *args) -> None:
        """Like redis-py packing a command: a value it cannot encode fails before sending."""
        for arg in args:
            for part in (arg if isinstance(arg, list) else [arg]):
                if isinstance(part, str) and any(bad in part for bad in self.unencodable):
                    raise DataError(f"cannot encode {part!r}")

    def _alive(self, key: str) -> bool:
        exp = self.expiry.get(key)
        if exp is not None and time.monotonic() > exp:
            self.data.pop(key, None)
            self.expiry.pop(key, None)
        return key in self.data

    def _maybe_fail(self) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("fake redis is down")

    async def exists(self, key: str) -> int:
        self._maybe_fail()
        self._encode(key)
        return int(self._alive(key))

    async def set(self, key, value, nx=False, px=None, ex=None):
        self._maybe_fail()
        self._encode(key)
        if nx and self._alive(key):
            return None
        self.data[key] = str(value)
        self.expiry.pop(key, None)
        if px is not None:
            self.expiry[key] = time.monotonic() + px / 1000
        if ex is not None:
            self.expiry[key] = time.monotonic() + ex
        return True

    async def get(self, key):
        self._maybe_fail()
        self._encode(key)
        return self.data[key] if self._alive(key) else None

    async def pexpire(self, key, ms):
        if self._alive(key):
            self.expiry[key] = time.monotonic() + ms / 1000
            return 1
        return 0

    async def delete(self, *keys):
        n = 0
        for key in keys:
            n += int(self.data.pop(key, None) is not None)
            self.expiry.pop(key, None)
        return n

    async def incrby(self, key, n):
        self.data[key] = str(int(self.data.get(key, "0")) + n)
        return int(self.data[key])

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)

    def register_script(self, lua: str) -> FakeScript:
        from agents.idempotency import CLAIM_MANY

        assert lua == CLAIM_MANY, "the fake knows the ledger's claim script only"
        return FakeScript(self._claim_many)

    async def _claim_many(self, keys, args) -> list[int]:
        """agents.idempotency.CLAIM_MANY, in Python."""
        worker, lease_ms = args
        out = []
        for seen, claim in zip(keys[::2], keys[1::2]):
            if self._alive(seen):
                out.append(0)
            elif await self.set(claim, worker, nx=True, px=lease_ms):
                out.append(1)
            elif self.data.get(claim) == worker:
                await self.pexpire(claim, lease_ms)
                out.append(1)
            else:
                out.append(2)
        return out


class FakePipeline:
    """Queues the fake's commands; ``execute`` runs them in order (one 'round trip')."""

    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.calls: list = []

    async def __aenter__(self) -> FakePipeline:  # noqa: PYI034
        return self

    async def __aexit__(self, *exc) -> None:
        self.calls = []

    def __getattr__(self, name: str):
        method = getattr(self.redis, name)

        def queue(*args, **kwargs):
            self.calls.append((method, args, kwargs))
            return self
        return queue

    async def execute(self) -> list:
        self.redis._maybe_fail()
        calls, self.calls = self.calls, []
        for _, args, kwargs in calls:  # packed before anything is sent
            self.redis._encode(*args, *kwargs.values())
        return [await method(*args, **kwargs) for method, args, kwargs in calls]


class FakeScript:
    def __init__(self, run) -> None:
        self.run = run

    async def __call__(self, keys=(), args=(), client=None):
        if isinstance(client, FakePipeline):
            client.calls.append((self.run, (list(keys), list(args)), {}))
            return client
        return await self.run(list(keys), list(args))


@dataclass
class FakeInference:
    """Deterministic 'models': text depends on role, prompt tail and seed; calls are recorded."""

    fail_times: int = 0                    # the next N calls raise
    fail_when: str | None = None           # any call whose prompt contains this raises
    version: int = 3
    judge_bias: float = 0.1                # extra probability for whatever is shown as (A)
    calls: list = field(default_factory=list)
    # (role, prompt, params) -> text, or None for the default text
    reply_for: Callable | None = None

    def _maybe_fail(self, texts: list[str]) -> None:
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError("triton unavailable (fake)")
        if self.fail_when and any(self.fail_when in t for t in texts):
            raise ValueError(f"fake model rejects prompts containing {self.fail_when!r}")

    async def generate(self, role, items, params):
        self.calls.append((role, items, params))
        self._maybe_fail([p for p, _ in items])
        out = []
        for prompt, seed in items:
            tail = prompt[-40:].replace("\n", " ")
            scripted = self.reply_for(role, prompt, params) if self.reply_for else None
            out.append([Generation(text=scripted if scripted is not None else f" {role}#{k} "
                                   f"seed={seed} on [{tail}]\n\nHuman: leaked",
                                   prompt_tokens=len(prompt) // 4, completion_tokens=8,
                                   model_version=self.version)
                        for k in range(params.num_samples)])
        await asyncio.sleep(0)
        return out

    async def judge(self, prompts, choices, cot, seed):
        self.calls.append(("judge", prompts, choices))
        self._maybe_fail(prompts)
        results = []
        for prompt in prompts:
            # Prefer the option that holds a reviser output; add a position bias toward (A).
            question = prompt.rsplit("Consider the following conversation", 1)[-1]
            a_text = question.split("(A) ", 1)[1].split("\n(B) ", 1)[0]
            p_a = 0.7 if "reviser#" in a_text else 0.3
            p_a = min(0.99, p_a + self.judge_bias)
            results.append(JudgeResult(probs=[p_a, 1 - p_a], model_version=self.version + 1))
        return results


class CaptureSender:
    """Collects (topic, key, record) tuples; can fail the next N sends."""

    def __init__(self) -> None:
        self.sent: list = []
        self.fail_next = 0

    async def __call__(self, topic, key, record):
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("fake kafka send failed")
        self.sent.append((topic, key, record))

    def on(self, topic):
        return [r for t, _, r in self.sent if t == topic]
