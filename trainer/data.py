"""Training examples: decode wire records, tokenise chat turns, pad batches.

Records arrive as JSON objects and are decoded by streams/records.py (strict types, unknown
keys such as faust's ``__faust`` ignored); only the fields training needs are kept.

Every answer is scored as the assistant turn of a chat: the prompt part is the chat
template with ``add_generation_prompt=True`` and the labels cover only the tokens after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from serving.special_tokens import neutralise

IGNORE_INDEX = -100


@dataclass
class SFTExample:
    prompt_id: str
    prompt: str
    response: str
    kind: str = "harmful"
    policy_version: int = 0
    weight: float = 1.0
    record_id: str = ""  # the producer's stable id (duplicates after a crash share it)
    source: str = ""  # "topic/partition/offset": the record's unique place in the log
    carries: int = 0  # rounds it was carried into after its round was rejected


@dataclass
class PreferenceExample:
    prompt_id: str
    prompt: str
    chosen: str
    rejected: str
    p_chosen: float = 1.0
    kind: str = "harmful"
    policy_version: int = 0
    weight: float = 1.0
    record_id: str = ""
    source: str = ""
    carries: int = 0


@dataclass
class RLSample:
    """One answer the serving policy sampled for an RL round, with the served reward model's
    score and its leave-one-out advantage among the prompt's k answers."""

    prompt_id: str
    prompt: str
    answer: str
    reward: float
    advantage: float = 0.0
    kind: str = "harmful"
    sample: int = 0  # its index among the prompt's k answers
    truncated: bool = False  # cut at the token limit: its end of turn is not the policy's
    completion_tokens: int = 0
    policy_version: int = 0
    reward_version: int = 0


class BadRecord(ValueError):
    """A record that cannot be used; the message names the field and the fix."""


class DroppedTarget(ValueError):
    """A well-formed record whose training target the pipeline dropped (agents/targets.py);
    the message is the pipeline's reason."""


def parse_sft(raw: bytes | str | dict, source: str = "") -> SFTExample:
    """Decode an SFTRecord (strict types, unknown keys ignored) into a training example."""
    from streams.records import RecordError, SFTRecord, decode

    try:
        record = decode(SFTRecord, raw)
    except RecordError as exc:
        raise BadRecord(str(exc)) from exc
    if record.target == "dropped":
        raise DroppedTarget(record.target_note or "dropped by the pipeline")
    return SFTExample(prompt_id=record.prompt_id, prompt=record.prompt, response=record.response,
                      kind=record.kind, policy_version=record.policy_version,
                      record_id=record.record_id, source=source)


def parse_preference(raw: bytes | str | dict, source: str = "") -> PreferenceExample:
    """Decode a PreferenceRecord into a training example (soft label ``p_chosen``)."""
    from streams.records import PreferenceRecord, RecordError, decode

    try:
        record = decode(PreferenceRecord, raw)
    except RecordError as exc:
        raise BadRecord(str(exc)) from exc
    if record.target == "dropped":
        raise DroppedTarget(record.target_note or "dropped by the pipeline")
    return PreferenceExample(prompt_id=record.prompt_id, prompt=record.prompt,
                             chosen=record.chosen, rejected=record.rejected,
                             p_chosen=record.p_chosen, kind=record.kind,
                             policy_version=record.policy_version,
                             record_id=record.record_id, source=source)


# --- tokenisation ------------------------------------------------------------------------
@dataclass
class Tokenised:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on prompt tokens
    weight: float = 1.0
    extra: dict = field(default_factory=dict)


def chat_prompt_text(tokenizer, prompt: str) -> str:
    """The prompt as one user turn; special-token spellings in it are neutralised as serving
    neutralises them (``serving/special_tokens.py``)."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": neutralise(prompt, tokenizer)}], tokenize=False,
        add_generation_prompt=True)


def chat_full_text(tokenizer, prompt: str, answer: str) -> str:
    """Prompt and answer as a conversation, both neutralised: a record cannot smuggle a
    control token (``<|im_end|>``, ``<|im_start|>system``) into training."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": neutralise(prompt, tokenizer)},
         {"role": "assistant", "content": neutralise(answer, tokenizer)}],
        tokenize=False)


def tokenise_turn(tokenizer, prompt: str, answer: str, max_length: int) -> Tokenised:
    """Token ids of prompt+answer with labels only on the assistant's tokens.

    The prompt part is the template with ``add_generation_prompt=True``; the full conversation
    must start with exactly those tokens (checked), the rest are the answer's labels. Too long
    sequences lose prompt tokens from the left (the answer matters most) and answer tokens from
    the right; at least half of ``max_length`` stays for the answer when it needs it.
    """
    prompt_ids = tokenizer(chat_prompt_text(tokenizer, prompt),
                           add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(chat_full_text(tokenizer, prompt, answer),
                         add_special_tokens=False)["input_ids"]
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


@dataclass
class PairTokens:
    """One preference pair as a shared prefix (the prompt tokens both rows start with) and each
    answer's rest of the row, so the prompt is computed once for both (trainer.losses)."""

    prefix: list[int]
    chosen: Tokenised     # the chosen row after the prefix: ids and labels
    rejected: Tokenised


def split_pair(chosen: Tokenised, rejected: Tokenised) -> PairTokens | None:
    """The longest common unlabelled prefix of two rows, and the rest of each; None when the
    rows do not start alike (prompts cut differently to fit ``max_length``)."""
    n = 0
    for a, b, la, lb in zip(chosen.input_ids, rejected.input_ids, chosen.labels, rejected.labels):
        if a != b or la != IGNORE_INDEX or lb != IGNORE_INDEX:
            break
        n += 1
    if n == 0:  # the first answer token needs a token before it to be predicted from
        return None
    return PairTokens(chosen.input_ids[:n],
                      Tokenised(chosen.input_ids[n:], chosen.labels[n:]),
                      Tokenised(rejected.input_ids[n:], rejected.labels[n:]))


def preference_batch(tokenizer, examples: list[PreferenceExample],
                     max_length: int) -> dict[str, torch.Tensor]:
    """Chosen rows first, then rejected rows (one forward pass for both), plus soft labels;
    ``pairs`` holds the same rows as ``PairTokens`` (a shared prompt per pair) where every pair
    has one."""
    chosen = [tokenise_turn(tokenizer, ex.prompt, ex.chosen, max_length) for ex in examples]
    rejected = [tokenise_turn(tokenizer, ex.prompt, ex.rejected, max_length) for ex in examples]
    batch = pad_batch(chosen + rejected, tokenizer.pad_token_id)
    pairs = [split_pair(c, r) for c, r in zip(chosen, rejected)]
    if all(pair is not None for pair in pairs):  # else the padded rows serve (trainer.losses)
        batch["pairs"] = pairs
    batch["p_chosen"] = torch.tensor([ex.p_chosen for ex in examples], dtype=torch.float32)
    batch["weights"] = torch.tensor([ex.weight for ex in examples], dtype=torch.float32)
    return batch


def rl_batch(tokenizer, samples: list[RLSample], max_length: int) -> dict[str, torch.Tensor]:
    """Sampled answers as labelled rows plus their ``advantages``. A truncated answer's labels
    stop before the end-of-turn tokens the chat template appends: the policy did not end it
    there, and teaching it to would reward short answers for nothing."""
    end = tokenise_turn(tokenizer, "x", "", max_length)
    end_tokens = sum(1 for label in end.labels if label != IGNORE_INDEX)
    items = []
    for sample in samples:
        t = tokenise_turn(tokenizer, sample.prompt, sample.answer, max_length)
        if sample.truncated and end_tokens:
            labelled = [i for i, label in enumerate(t.labels) if label != IGNORE_INDEX]
            for i in labelled[-end_tokens:] if len(labelled) > end_tokens else []:
                t.labels[i] = IGNORE_INDEX
        items.append(t)
    batch = pad_batch(items, tokenizer.pad_token_id)
    batch["advantages"] = torch.tensor([s.advantage for s in samples], dtype=torch.float32)
    return batch
