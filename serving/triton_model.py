"""Triton python-backend adapter: one role (policy, critic, reviser, judge, or reward).

``serving/repository.py`` copies this file to ``<repository>/<role>/<version>/model.py``.
``initialize`` reads the knobs from config.pbtxt ``parameters`` (role, threads, core sharing) and
the version's ``source.json`` (which weights this version serves), then loads them: through
``serving/textgen.py`` for the generation roles, as a ``serving/reward_model.RewardModel`` (the
preference model) for the reward role. ``execute`` receives the requests that Triton's dynamic
batcher grouped, runs all generate requests in one batch and all judge requests in another (the
reward role: all score requests in one batch), and returns one response per request. A request
that fails to parse or run, or asks a role for an op it does not answer (``score`` is the reward
role's, ``generate`` and ``judge`` the others'), gets its own ``TritonError``; the others still
succeed. Every answer names the version that produced it.

With ``hot_swap`` on (the policy), the instance also follows the repository's control file and
takes a newly published version's weights in place, between batches, without a Triton reload
(``serving/hot_swap.py``); Triton's own version number then stays the one it loaded. The reward
role never swaps in place: a new reward version comes in through Triton's ``load_model``.

Custom Prometheus counters (``cai_requests_total`` and friends, labelled by role, version
and instance pid) appear on Triton's ``/metrics`` endpoint next to Triton's own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from core.settings import REWARD_ROLE
from serving.core_share import CoreShare
from serving.hot_swap import SwapWatcher
from serving.protocol import INPUT_NAME, OUTPUT_NAME, decode_request, encode_response
from serving.repository import read_version_source
from serving.requests import GenRequest, JudgeRequest, RequestError, ScoreRequest
from serving.textgen import TextGenerator

logger = logging.getLogger(__name__)

_COUNTERS = {
    "cai_requests_total": "Inference requests answered (one per prompt), by role and version.",
    "cai_request_errors_total": "Inference requests that failed, by role and version.",
    "cai_batches_total": "execute() calls: requests / batches is the mean dynamic batch size.",
    # The reward role counts the tokens it scored here.
    "cai_prompt_tokens_total": "Prompt tokens processed, by role and version.",
    "cai_generated_tokens_total": "Tokens generated, by role and version.",
}


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.role = params.get("role") or args["model_name"]
        version = int(args["model_version"])
        self.role_dir = Path(args["model_repository"])
        source = read_version_source(self.role_dir / args["model_version"])
        threads = int(params.get("threads") or 1)
        # config.pbtxt's instance kind (serving/repository.py, from CAI_DEVICE) decides the device.
        device = (f"cuda:{args.get('model_instance_device_id', 0)}"
                  if args.get("model_instance_kind") == "GPU" else "cpu")
        self._engine_args = {"dtype": params.get("dtype") or "float32",
                             "prefix_min_tokens": int(params.get("prefix_min_tokens") or 32),
                             "device": device}
        self.scores = self.role == REWARD_ROLE
        if self.scores:
            engine = self._load_reward(source, threads)
        else:
            engine = TextGenerator(source, threads=threads, **self._engine_args)
        self.core_share = None
        if params.get("share_cores", "true") == "true":
            try:
                self.core_share = CoreShare(min_threads=threads)
            except OSError as exc:  # no writable temp folder: keep the fixed thread count
                logger.warning("%s: cores are not shared (%s); each batch uses %d threads",
                               self.role, exc, threads)
        if not self.scores:
            engine.core_share = self.core_share
        # (version, engine), replaced as one value: a batch reads it once and keeps its engine.
        self.engine = (version, engine)
        self._families: dict = {}
        self._metrics: dict = {}
        self._metrics_version = None
        self._metrics_for(version)  # at load, as Triton's metric sharing needs (see below)
        self.watcher = None
        # The reward role is reloaded by Triton (publish.py's fallback), never swapped in place.
        if params.get("hot_swap", "false") == "true" and not self.scores:
            self.watcher = SwapWatcher(self.role_dir, version, self._load_version,
                                       self._install).start()
        logger.info("%s v%d serving %s on %s", self.role, version, source, device)

    @property
    def version(self) -> int:
        return self.engine[0]

    def _load_reward(self, source: str, threads: int):
        """The preference model on ``source`` (a saved reward model, or a causal LM that gets a
        fresh seeded head), on this instance's device and dtype."""
        import torch

        from serving.reward_model import RewardModel

        if threads:
            torch.set_num_threads(threads)
        started = time.monotonic()
        model = RewardModel.from_pretrained(
            source, dtype=getattr(torch, self._engine_args["dtype"]))
        model = model.to(self._engine_args["device"]).eval()
        logger.info("reward model %s loaded in %.1fs", source, time.monotonic() - started)
        return model

    def _load_version(self, version: int) -> TextGenerator:
        """A new engine on ``version``'s weights (on the watcher's thread; the old one serves)."""
        source = read_version_source(self.role_dir / str(version))
        generator = TextGenerator(source, **self._engine_args)  # threads: the core share's
        generator.core_share = self.core_share
        return generator

    def _install(self, version: int, generator: TextGenerator) -> None:
        self.engine = (version, generator)

    def _metrics_for(self, version: int) -> dict:
        """The counters labelled with ``version`` (made on the execute thread, on first use)."""
        if version != self._metrics_version:
            self._metrics = self._make_metrics(version)
            self._metrics_version = version
        return self._metrics

    def _make_metrics(self, version: int) -> dict:
        # pb_utils.MetricFamily exists in the python backend since Triton 23.05 (2.34).
        if not hasattr(pb_utils, "MetricFamily"):
            return {}
        # The "instance" label (pid) keeps every process's series distinct: Triton 2.51 shares
        # a Metric whose name and labels match across stub processes and frees it when the
        # first one unloads, which crashes the server on a same-version reload
        # (triton-inference-server/server#8663).
        labels = {"role": self.role, "version": str(version), "instance": str(os.getpid())}
        if not self._families:
            self._families = {
                name: pb_utils.MetricFamily(name=name, description=text,
                                            kind=pb_utils.MetricFamily.COUNTER)
                for name, text in _COUNTERS.items()
            }
        return {name: family.Metric(labels=labels) for name, family in self._families.items()}

    def _count(self, name: str, value: float) -> None:
        metric = self._metrics.get(name)
        if metric is not None and value:
            metric.increment(value)

    def execute(self, requests: list) -> list:
        started = time.monotonic()
        # The engine of this whole batch: a swap during the batch applies to the next one.
        version, engine = self.engine
        self._metrics_for(version)
        responses: list = [None] * len(requests)
        parsed: dict[int, list] = {}
        for r, request in enumerate(requests):
            try:
                raw = pb_utils.get_input_tensor_by_name(request, INPUT_NAME).as_numpy().reshape(-1)
                items = [decode_request(bytes(item)) for item in raw]
                for item in items:
                    self._check_op(item)
                parsed[r] = items
            except Exception as exc:  # noqa: BLE001 (a malformed request fails alone)
                responses[r] = self._error(exc, version)
        answers: dict[int, list] = {r: [None] * len(items) for r, items in parsed.items()}
        gen = [(r, i, req) for r, items in parsed.items() for i, req in enumerate(items)
               if isinstance(req, GenRequest)]
        judge = [(r, i, req) for r, items in parsed.items() for i, req in enumerate(items)
                 if isinstance(req, JudgeRequest)]
        score = [(r, i, req) for r, items in parsed.items() for i, req in enumerate(items)
                 if isinstance(req, ScoreRequest)]
        failed: dict[int, Exception] = {}
        with self._busy():
            self._run(gen, lambda reqs: self._generate(engine, version, reqs), answers, failed)
            self._run(judge, lambda reqs: self._judge(engine, version, reqs), answers, failed)
            self._run(score, lambda reqs: self._score(engine, version, reqs), answers, failed)
        for r, items in answers.items():
            if r in failed:
                responses[r] = self._error(failed[r], version)
                continue
            out = np.array([[encode_response(a)] for a in items], dtype=np.object_)
            responses[r] = pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(OUTPUT_NAME, out)])
        self._count("cai_batches_total", 1)
        self._count("cai_requests_total",
                    sum(len(items) for r, items in parsed.items() if r not in failed))
        logger.debug("%s v%d: %d requests in %.2fs", self.role, version, len(requests),
                     time.monotonic() - started)
        return responses

    def _check_op(self, request) -> None:
        """Refuse an op this role does not answer (the reward role scores, the others generate
        and judge)."""
        scoring = isinstance(request, ScoreRequest)
        if scoring != self.scores:
            op = ("score" if scoring else
                  "judge" if isinstance(request, JudgeRequest) else "generate")
            raise RequestError(f"the {self.role} role does not answer op {op!r}: 'score' goes to "
                               f"the {REWARD_ROLE} role, 'generate' and 'judge' to policy, critic, "
                               "reviser and judge")

    def _busy(self):
        """One batch of work: takes this instance's share of the cores when it shares them."""
        return (self.core_share.busy() if self.core_share is not None
                else contextlib.nullcontext())

    def _run(self, work: list, runner, answers: dict, failed: dict) -> None:
        """Run the whole batch; if it fails, rerun request by request so only the culprit fails."""
        if not work:
            return
        try:
            for (r, i, _), answer in zip(work, runner([req for _, _, req in work])):
                answers[r][i] = answer
            return
        except Exception as exc:  # noqa: BLE001
            if len({r for r, _, _ in work}) == 1:
                failed[work[0][0]] = exc
                return
        for r in sorted({r for r, _, _ in work}):
            mine = [(rr, i, req) for rr, i, req in work if rr == r]
            try:
                for (_, i, _), answer in zip(mine, runner([req for _, _, req in mine])):
                    answers[r][i] = answer
            except Exception as exc:  # noqa: BLE001
                failed[r] = exc

    def _generate(self, generator: TextGenerator, version: int,
                  requests: list[GenRequest]) -> list[dict]:
        results = generator.generate(requests)
        self._count("cai_prompt_tokens_total",
                    sum(s.prompt_tokens for rs in results for s in rs[:1]))
        self._count("cai_generated_tokens_total",
                    sum(s.completion_tokens for rs in results for s in rs))
        return [{
            "model_version": version, "role": self.role,
            "samples": [{"text": s.text, "prompt_tokens": s.prompt_tokens,
                         "completion_tokens": s.completion_tokens, "logprob_sum": s.logprob_sum,
                         "finish_reason": s.finish_reason} for s in samples],
        } for samples in results]

    def _judge(self, generator: TextGenerator, version: int,
               requests: list[JudgeRequest]) -> list[dict]:
        outputs = generator.judge(requests)
        return [{"model_version": version, "role": self.role, "probs": o.probs,
                 "logprobs": o.logprobs, "reasoning": o.reasoning} for o in outputs]

    def _score(self, model, version: int, requests: list[ScoreRequest]) -> list[dict]:
        """The reward of every (prompt, answer): one forward pass per distinct max_length."""
        import torch

        device = next(model.parameters()).device
        rewards: list[float] = [0.0] * len(requests)
        groups: dict[int, list[int]] = {}
        for k, request in enumerate(requests):
            request.validate()
            groups.setdefault(request.max_length, []).append(k)
        for max_length, indices in groups.items():
            batch = model.encode([requests[k].prompt for k in indices],
                                 [requests[k].answer for k in indices], max_length)
            with torch.no_grad():
                values = model(batch["input_ids"].to(device),
                               batch["attention_mask"].to(device)).tolist()
            self._count("cai_prompt_tokens_total", int(batch["attention_mask"].sum()))
            for k, value in zip(indices, values, strict=True):
                rewards[k] = float(value)
        return [{"model_version": version, "role": self.role, "reward": reward}
                for reward in rewards]

    def _error(self, exc: Exception, version: int):
        self._count("cai_request_errors_total", 1)
        message = f"{self.role} v{version}: {type(exc).__name__}: {exc}"
        logger.warning(message)
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))

    def finalize(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        # Metrics must go before their families (the backend enforces the order).
        self._metrics = {}
        self._families = {}
        logger.info("%s v%d unloaded", self.role, self.version)
