"""Training examples: decode wire records, tokenise chat turns, pad batches.

Records arrive as JSON objects (see streams/records.py); only the fields the trainer needs
are read and unknown keys (faust's ``__faust``, fields added later) are ignored, so the
trainer keeps working when the wire schema grows.

Every answer is scored as the assistant turn of a chat: the prompt part is the chat
template with ``add_generation_prompt=True`` and the labels cover only the tokens after it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch

IGNORE_INDEX = -100


@dataclass
class SFTExample:
    prompt_id: str
    prompt: str
    response: str
    kind: str = "harmful"
    policy_version: int = 0
    weight: float = 1.0
    source: str = ""  # "topic/partition/offset": the record's unique place in the log


@dataclass
class PreferenceExample:
    prompt_id: str
    prompt: str
    chosen: str
    rejected: str
    p_chosen: float = 1.0
    policy_version: int = 0
    weight: float = 1.0
    source: str = ""


class BadRecord(ValueError):
    """A record that cannot be used: not JSON, or a required field missing or of the wrong type."""


def _load(raw: bytes | str | dict) -> dict:
    if isinstance(raw, dict):
        return raw
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRecord(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRecord(f"expected a JSON object, got {type(data).__name__}")
    return data


def _field(data: dict, name: str, kind: type, default: Any = ...) -> Any:
    if name not in data:
        if default is ...:
            raise BadRecord(f"missing field {name!r}")
        return default
    value = data[name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRecord(f"field {name!r} should be {kind.__name__}, got {type(value).__name__}")
    return value


def parse_sft(raw: bytes | str | dict, source: str = "") -> SFTExample:
    data = _load(raw)
    return SFTExample(
        prompt_id=_field(data, "prompt_id", str), prompt=_field(data, "prompt", str),
        response=_field(data, "response", str), kind=_field(data, "kind", str, "harmful"),
        policy_version=_field(data, "policy_version", int, 0), source=source,
    )


def parse_preference(raw: bytes | str | dict, source: str = "") -> PreferenceExample:
    data = _load(raw)
    p = _field(data, "p_chosen", float, 1.0)
    if not 0.0 <= p <= 1.0:
        raise BadRecord(f"field 'p_chosen'={p} is outside [0, 1]")
    return PreferenceExample(
        prompt_id=_field(data, "prompt_id", str), prompt=_field(data, "prompt", str),
        chosen=_field(data, "chosen", str), rejected=_field(data, "rejected", str), p_chosen=p,
        policy_version=_field(data, "policy_version", int, 0), source=source,
    )


# --- tokenisation ------------------------------------------------------------------------
@dataclass
class Tokenised:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on prompt tokens
    weight: float = 1.0
    extra: dict = field(default_factory=dict)


def chat_prompt_text(tokenizer, prompt: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


def chat_full_text(tokenizer, prompt: str, answer: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
        tokenize=False)


def tokenise_turn(tokenizer, prompt: str, answer: str, max_length: int) -> Tokenised:
    """Token ids of prompt+answer with labels only on the assistant's tokens.

    The prompt part is the template with ``add_generation_prompt=True``; the full conversation
    must start with exactly those tokens (checked), the rest are the answer's labels. Too long
    sequences lose prompt tokens from the left (the answer matters most) and answer tokens from
    the right; at least half of ``max_length`` stays for the answer when it needs it.
    """
    prompt_ids = tokenizer(chat_prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(chat_full_text(tokenizer, prompt, answer), add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError(
            "the chat template does not render the prompt as a prefix of the conversation; "
            "the trainer cannot tell assistant tokens apart (use a model with a standard template)")
    answer_ids = full_ids[len(prompt_ids):]
    keep_answer = min(len(answer_ids), max_length - min(len(prompt_ids), max_length // 2))
    keep_prompt = min(len(prompt_ids), max_length - keep_answer)
    prompt_ids = prompt_ids[len(prompt_ids) - keep_prompt:]
    answer_ids = answer_ids[:keep_answer]
    return Tokenised(input_ids=prompt_ids + answer_ids,
                     labels=[IGNORE_INDEX] * len(prompt_ids) + answer_ids)


def pad_batch(items: list[Tokenised], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask``, ``labels`` and per-example ``weights``."""
    width = max(len(t.input_ids) for t in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, t in enumerate(items):
        n = len(t.input_ids)
        ids[row, :n] = torch.tensor(t.input_ids)
        labels[row, :n] = torch.tensor(t.labels)
        mask[row, :n] = 1
    weights = torch.tensor([t.weight for t in items], dtype=torch.float32)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "weights": weights}


def sft_batch(tokenizer, examples: list[SFTExample], max_length: int,
              weights: list[float] | None = None) -> dict[str, torch.Tensor]:
    items = []
    for i, ex in enumerate(examples):
        t = tokenise_turn(tokenizer, ex.prompt, ex.response, max_length)
        t.weight = weights[i] if weights is not None else ex.weight
        items.append(t)
    return pad_batch(items, tokenizer.pad_token_id)


def preference_batch(tokenizer, examples: list[PreferenceExample],
                     max_length: int) -> dict[str, torch.Tensor]:
    """Chosen rows first, then rejected rows (one forward pass for both), plus soft labels."""
    chosen = [tokenise_turn(tokenizer, ex.prompt, ex.chosen, max_length) for ex in examples]
    rejected = [tokenise_turn(tokenizer, ex.prompt, ex.rejected, max_length) for ex in examples]
    batch = pad_batch(chosen + rejected, tokenizer.pad_token_id)
    batch["p_chosen"] = torch.tensor([ex.p_chosen for ex in examples], dtype=torch.float32)
    batch["weights"] = torch.tensor([ex.weight for ex in examples], dtype=torch.float32)
    return batch
