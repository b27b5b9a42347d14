"""The JSON wire format between ``serving/client.py`` and the Triton model
``serving/triton_model.py``.

Every Triton role has one BYTES input ``request`` and one BYTES output ``response``, shape
``[batch, 1]``; each element is one UTF-8 JSON object. The client sends one prompt per
Triton request so that Triton's dynamic batcher, not the client, forms batches and a bad
prompt fails alone.

Request::

    {"op": "generate", "prompt": "...", "params": {max_new_tokens, temperature, top_p, seed,
                                                  stop, num_samples, chat, system,
                                                  response_prefix}}
    {"op": "judge", "prompt": "...", "choices": ["(A)", "(B)"], "cot": false, "params": {...}}
    {"op": "score", "prompt": "...", "answer": "...", "params": {"max_length": 512}}

Response::

    {"model_version": 2, "role": "policy", "samples": [{"text", "prompt_tokens",
      "completion_tokens", "logprob_sum", "finish_reason"}]}
    {"model_version": 1, "role": "judge", "probs": [0.4, 0.6], "logprobs": [...], "reasoning": null}
    {"model_version": 1, "role": "reward", "reward": 0.17}

``generate`` and ``judge`` go to the generation roles (policy, critic, reviser, judge), ``score``
to the reward role (the preference model); a request for another role's op fails alone.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from serving.requests import GenRequest, JudgeRequest, RequestError, ScoreRequest

INPUT_NAME = "request"
OUTPUT_NAME = "response"
OPS = ("generate", "judge", "score")

_GEN_FIELDS = {f.name for f in dataclasses.fields(GenRequest)} - {"prompt"}
_JUDGE_FIELDS = {f.name for f in dataclasses.fields(JudgeRequest)} - {"prompt", "choices", "cot"}
_SCORE_FIELDS = {f.name for f in dataclasses.fields(ScoreRequest)} - {"prompt", "answer"}


def encode_generate(prompt: str, params: dict[str, Any]) -> bytes:
    return json.dumps({"op": "generate", "prompt": prompt, "params": params}).encode()


def encode_judge(prompt: str, choices: list[str], cot: bool, params: dict[str, Any]) -> bytes:
    return json.dumps({"op": "judge", "prompt": prompt, "choices": list(choices), "cot": cot,
                       "params": params}).encode()


def encode_score(prompt: str, answer: str, params: dict[str, Any]) -> bytes:
    return json.dumps({"op": "score", "prompt": prompt, "answer": answer,
                       "params": params}).encode()


def decode_request(raw: bytes) -> GenRequest | JudgeRequest | ScoreRequest:
    """Parse and validate one request element; raises RequestError naming the bad field."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"request is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError("request must be a JSON object with 'op' and 'prompt'")
    op = data.get("op", "generate")
    if op not in OPS:
        raise RequestError(f"op must be one of {OPS}, got {op!r}")
    if "prompt" not in data:
        raise RequestError("request has no 'prompt'")
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise RequestError("params must be a JSON object")
    allowed = {"generate": _GEN_FIELDS, "judge": _JUDGE_FIELDS, "score": _SCORE_FIELDS}[op]
    unknown = set(params) - allowed
    if unknown:
        raise RequestError(f"unknown {op} parameter(s) {sorted(unknown)}; allowed: "
                           f"{sorted(allowed)}")
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    if op == "generate":
        request: GenRequest | JudgeRequest | ScoreRequest = GenRequest(prompt=data["prompt"],
                                                                       **params)
    elif op == "score":
        if "answer" not in data:
            raise RequestError("score request has no 'answer' (the text whose reward is asked)")
        request = ScoreRequest(prompt=data["prompt"], answer=data["answer"], **params)
    else:
        choices = data.get("choices")
        if not isinstance(choices, list):
            raise RequestError("judge request needs 'choices', a list of strings like ['(A)', "
                               "'(B)']")
        request = JudgeRequest(prompt=data["prompt"], choices=tuple(choices),
                               cot=bool(data.get("cot", False)), **params)
    request.validate()
    return request


def encode_response(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def decode_response(raw: bytes) -> dict[str, Any]:
    return json.loads(raw)
