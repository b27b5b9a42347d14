"""Async gRPC client for the Triton roles (policy, critic, reviser, judge, and reward).

Agents and the trainer call ``InferenceClient.generate`` / ``judge`` / ``score`` (the reward
role's preference model) instead of talking to Triton directly. Each prompt (or prompt and
answer pair) is its own Triton request, sent concurrently, so Triton's dynamic batcher forms the
batches and one bad prompt fails alone. While the server is
unavailable (starting, restarting, connection refused) a call is retried with exponential
backoff; every error names the role, the URL and what failed. Each call is timed per role in
the process's Prometheus metrics (``cai_triton_request_seconds``, retries included), and the
model version that answered is kept (``cai_triton_model_version``).

Example::

    client = InferenceClient("127.0.0.1:18001")
    [[answer]] = await client.generate("policy", ["How do I bake bread?"], GenerationParams())
    [verdict] = await client.judge(["...(A) ... (B) ... The answer is:"], ["(A)", "(B)"])
    [scored] = await client.score(["How do I bake bread?"], ["Mix flour, water and yeast."])
    await client.close()
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from core.settings import REWARD_ROLE
from serving import protocol
from serving.requests import Generation, GenerationParams, JudgeResult, ScoreResult

logger = logging.getLogger(__name__)

REQUEST_SECONDS = Histogram(
    "cai_triton_request_seconds", "Seconds per Triton request of a role, retries included",
    ["role"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                       300.0))
REQUEST_FAILURES = Counter("cai_triton_request_failures",
                           "Triton requests of a role that failed after their retries", ["role"])
MODEL_VERSION = Gauge("cai_triton_model_version",
                      "Model version that answered the latest request of a role", ["role"])

RETRYABLE = ("UNAVAILABLE", "Connection refused", "failed to connect", "Socket closed",
             "connection reset", "is not ready", "Request for unknown model")


class InferenceError(RuntimeError):
    """A Triton call failed; the message names role, URL and cause."""

    def __init__(self, message: str, role: str, url: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.role = role
        self.url = url
        self.retryable = retryable


def _is_retryable(exc: Exception) -> bool:
    text = f"{getattr(exc, 'status', lambda: '')()} {exc}"
    return any(marker.lower() in text.lower() for marker in RETRYABLE)


class InferenceClient:
    """Call the Triton roles over gRPC (``host:port``), with timeouts and retries."""

    def __init__(self, grpc_url: str, timeout_s: float = 120.0, max_retries: int = 5,
                 backoff_s: float = 0.5, max_backoff_s: float = 8.0) -> None:
        self.url = grpc_url
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._client = None

    def _grpc(self):
        if self._client is None:
            import tritonclient.grpc.aio as grpcclient

            self._client = grpcclient.InferenceServerClient(self.url)
        return self._client

    async def _infer_one(self, role: str, payload: bytes) -> dict:
        started = time.perf_counter()
        try:
            answer = await self._infer_with_retries(role, payload)
        except InferenceError:
            REQUEST_FAILURES.labels(role).inc()
            raise
        finally:
            REQUEST_SECONDS.labels(role).observe(time.perf_counter() - started)
        if "model_version" in answer:
            MODEL_VERSION.labels(role).set(answer["model_version"])
        return answer

    async def _infer_with_retries(self, role: str, payload: bytes) -> dict:
        import tritonclient.grpc.aio as grpcclient
        from tritonclient.utils import InferenceServerException

        data = np.array([[payload]], dtype=np.object_)
        attempt = 0
        while True:
            tensor = grpcclient.InferInput(protocol.INPUT_NAME, list(data.shape), "BYTES")
            tensor.set_data_from_numpy(data)
            try:
                result = await self._grpc().infer(
                    role, [tensor], outputs=[grpcclient.InferRequestedOutput(protocol.OUTPUT_NAME)],
                    client_timeout=self.timeout_s,
                )
                raw = result.as_numpy(protocol.OUTPUT_NAME).reshape(-1)[0]
                return protocol.decode_response(raw)
            except InferenceServerException as exc:
                status = exc.status() or ""
                if "DEADLINE_EXCEEDED" in status or "Deadline" in str(exc):
                    # Retryable: the server is hung or overloaded (requests are bounded in
                    # length); the caller parks the work instead of dead-lettering it.
                    hung = "" if await self.live() else "; it does not answer its health check"
                    raise InferenceError(f"{role} at {self.url}: no answer within "
                                         f"{self.timeout_s:.0f}s (timeout_s); the server is "
                                         f"overloaded or hung{hung}",
                                         role, self.url, retryable=True) from exc
                if not _is_retryable(exc) or attempt >= self.max_retries:
                    hint = (f" after {attempt + 1} attempts; is Triton running (`cai stack "
                            "status`)?"
                            if _is_retryable(exc) else "")
                    raise InferenceError(f"{role} at {self.url} failed: "
                                         f"{exc.message() or exc}{hint}",
                                         role, self.url, retryable=_is_retryable(exc)) from exc
            delay = (min(self.max_backoff_s, self.backoff_s * 2**attempt)
                     * (0.5 + random.random() / 2))
            attempt += 1
            logger.warning("%s at %s unavailable; retry %d/%d in %.1fs", role, self.url, attempt,
                           self.max_retries, delay)
            await asyncio.sleep(delay)

    async def generate(self, role: str, prompts: list[str],
                       params: GenerationParams | None = None) -> list[list[Generation]]:
        """Complete every prompt; returns, per prompt, ``params.num_samples`` generations."""
        params = params or GenerationParams()
        base = dataclasses.asdict(params)
        base["stop"] = list(params.stop)

        def payload(k: int) -> bytes:
            mine = dict(base)
            if params.seed is not None:
                mine["seed"] = params.seed + k * params.num_samples
            return protocol.encode_generate(prompts[k], mine)

        answers = await asyncio.gather(*(self._infer_one(role, payload(k))
                                         for k in range(len(prompts))))
        return [[Generation(text=s["text"], prompt_tokens=s["prompt_tokens"],
                            completion_tokens=s["completion_tokens"],
                            model_version=a["model_version"],
                            logprob_sum=s.get("logprob_sum"),
                            finish_reason=s.get("finish_reason", "length"))
                 for s in a["samples"]] for a in answers]

    async def judge(self, prompts: list[str], choices: list[str], cot: bool = False,
                    role: str = "judge", **params) -> list[JudgeResult]:
        """Probability of each choice per prompt. ``params``: chat, system, clamp,
        cot_max_new_tokens, cot_temperature, cot_stop, answer_prefix, seed (see
        serving.requests.JudgeRequest)."""
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}
        answers = await asyncio.gather(*(
            self._infer_one(role, protocol.encode_judge(p, choices, cot, params)) for p in prompts))
        return [JudgeResult(probs=a["probs"], model_version=a["model_version"],
                            reasoning=a.get("reasoning"), logprobs=a.get("logprobs", []))
                for a in answers]

    async def score(self, prompts: list[str], answers: list[str],
                    max_length: int = 512) -> list[ScoreResult]:
        """The reward role's reward of each (prompt, answer) pair, in order; ``max_length``:
        tokens of the rendered conversation kept (cut from the left)."""
        if len(prompts) != len(answers):
            raise ValueError(f"score needs one answer per prompt, got {len(prompts)} prompts and "
                             f"{len(answers)} answers")
        replies = await asyncio.gather(*(
            self._infer_one(REWARD_ROLE, protocol.encode_score(p, a, {"max_length": max_length}))
            for p, a in zip(prompts, answers, strict=True)))
        return [ScoreResult(reward=float(a["reward"]), model_version=a["model_version"])
                for a in replies]

    async def live(self, timeout_s: float = 5.0) -> bool:
        """The server answers its liveness check within ``timeout_s`` (a hung one does not)."""
        try:
            return bool(await self._grpc().is_server_live(client_timeout=timeout_s))
        except Exception:  # noqa: BLE001 - unreachable, refused or timed out
            return False

    async def ready(self, role: str) -> bool:
        try:
            return await self._grpc().is_model_ready(role)
        except Exception:  # noqa: BLE001
            return False

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def __aenter__(self) -> InferenceClient:  # noqa: PYI034
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
