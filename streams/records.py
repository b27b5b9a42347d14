"""Typed wire records for every pipeline topic, and strict decoding with field-named errors.

Every record is a flat ``faust.Record`` (``validation=True``) that travels as a JSON object.
Fields added later always get defaults, so old messages still decode; unknown keys (faust's
``__faust`` marker, fields from newer producers) are ignored. Each record carries lineage:
prompt id, round, principle ids, the model versions that produced it, the constitution version
and timestamps, so any dataset can be rebuilt by replaying topics.

Faust's own validation coerces silently (``None`` becomes ``"None"``), so ``decode`` checks the
JSON types strictly first and raises ``RecordError`` naming the record, the field and the fix.

``decode`` is the one gate every reader goes through (the stages, the trainer, ``cai export``,
``cai dead-letter``, the monitor and the dashboard), so it turns *every* hostile payload into a
``RecordError``: JSON nested too deeply (``RecursionError``), integers past Python's digit limit
or outside int64, lone surrogates that no UTF-8 encoder accepts (redis-py and Kafka would fail
on them later), ids longer than ``MAX_ID_CHARS``, and ``*_json`` fields that do not hold the JSON
shape their readers expect.
"""

from __future__ import annotations

import functools
import json
import math
import time
import typing
from typing import Any, TypeVar

import faust
import faust.exceptions
from faust.models.fields import StringField

KINDS = ("harmful", "helpful")
# How a revision (SFT record) was made, and how a preference label was made; a record's
# ``strategy`` names the one that made it (agents/strategies.py, docs/strategies.md).
REVISION_STRATEGIES = ("critique-revise", "direct", "context")
PREFERENCE_STRATEGIES = ("judge", "revision-over-initial", "contrastive")
# How a preference label can be made besides the strategies: a helpful prompt's answer over the
# constitution's bare decline, by construction (PipelineSettings.helpful_pairs).
ANSWER_OVER_DECLINE = "answer-over-decline"
# A red-team prompt's reasoned decline preferred over the bare decline (reason_pairs).
REASON_OVER_BARE = "reason-over-bare"
# A helpful prompt's answer preferred over the reason of the policy's decline alone, a
# warning off (warning_pairs).
ANSWER_OVER_WARNING = "answer-over-warning"
# A red-team decline that stops after its reason preferred over the same decline going on to
# comply, as the policy wrote it before the target was cut (stop_pairs).
STOP_OVER_GOING_ON = "stop-over-going-on"
STRATEGIES = (REVISION_STRATEGIES + PREFERENCE_STRATEGIES
              + (ANSWER_OVER_DECLINE, REASON_OVER_BARE, ANSWER_OVER_WARNING, STOP_OVER_GOING_ON))
# Ids become Redis keys and Kafka keys: bounded, so a hostile id cannot bloat either.
MAX_ID_CHARS = 512
INT64 = 2**63


class RecordError(ValueError):
    """A message that is not a valid record; ``field`` names the offending field (or None)."""

    def __init__(self, record: str, field: str | None, problem: str, fix: str = "") -> None:
        self.record = record
        self.field = field
        self.problem = problem
        where = f"{record}.{field}" if field else record
        message = f"{where}: {problem}"
        if fix:
            message += f". Fix: {fix}"
        super().__init__(message)


def blank(default: str | None = None) -> Any:
    """A string field that may be empty (model output can be); required when no default."""
    if default is None:
        return StringField(allow_blank=True, required=True)
    return StringField(allow_blank=True, required=False, default=default)


def now() -> float:
    return time.time()


class WireRecord(faust.Record, abstract=True, validation=True, serializer="json"):
    """Base class: semantic checks shared by every record run in ``__post_init__``."""

    def __post_init__(self) -> None:
        name = type(self).__name__
        for field in ("prompt_id",):
            if field in self._options.fields and not getattr(self, field):
                raise RecordError(name, field, "must be a non-empty string",
                                  "give every prompt an id")
            value = getattr(self, field, None)
            if isinstance(value, str) and len(value) > MAX_ID_CHARS:
                raise RecordError(name, field, f"has {len(value)} characters, more than "
                                  f"{MAX_ID_CHARS}", "use a short id (e.g. a content hash)")
        for field, shape in JSON_FIELDS.items():
            value = getattr(self, field, None)
            if isinstance(value, str) and value:
                problem = shape(parse_json(value))
                if problem:
                    raise RecordError(name, field, problem)
        kind = getattr(self, "kind", None)
        if kind is not None and kind not in KINDS:
            raise RecordError(name, "kind", f"{kind!r} is not one of {', '.join(KINDS)}",
                              "use 'harmful' for red-team prompts and 'helpful' for benign ones")
        strategy = getattr(self, "strategy", None)
        if strategy is not None and strategy not in STRATEGIES:
            raise RecordError(name, "strategy",
                              f"{strategy!r} is not one of {', '.join(STRATEGIES)}")
        for field in ("round", "rounds", "sample_index", "attempts", "sample",
                      "completion_tokens", "trainer_round"):
            value = getattr(self, field, None)
            if value is not None and value < 0:
                raise RecordError(name, field, f"must be >= 0, got {value}")
        for field in ("reward", "advantage"):  # decode checks these too; this stops a producer
            value = getattr(self, field, None)
            if value is not None and not math.isfinite(value):
                raise RecordError(name, field, f"must be a finite number, got {value}",
                                  "drop the sample or fix the reward model")
        p = getattr(self, "p_chosen", None)
        if p is not None and not (0.0 <= p <= 1.0):
            raise RecordError(name, "p_chosen", f"must lie in [0, 1], got {p}",
                              "send a probability, not a logit")


# ---- stage messages ---------------------------------------------------------------------------

class PromptRecord(WireRecord, validation=True, serializer="json"):
    """A prompt to answer (topic ``prompts``); written by ``cai feed``."""

    prompt_id: str
    prompt: str
    kind: str = "harmful"
    source: str = blank("")
    created_at: float = 0.0


class CritiqueRecord(WireRecord, validation=True, serializer="json"):
    """An answer waiting for critique round ``round`` (topic ``critique``)."""

    prompt_id: str
    prompt: str
    response: str = blank()  # the answer to critique (initial or latest revision)
    initial_response: str = blank("")
    kind: str = "harmful"
    source: str = blank("")
    sample_index: int = 0
    round: int = 1                      # 1-based: the round this critique belongs to
    rounds: int = 1                     # total rounds planned for this chain
    steps_json: str = "[]"              # finished rounds so far
    strategy: str = "critique-revise"
    policy_version: int = 0
    constitution_version: str = blank("")
    seed: int = 0
    prompt_created_at: float = 0.0
    created_at: float = 0.0


class ReviseRecord(WireRecord, validation=True, serializer="json"):
    """A critique waiting for its revision (topic ``revise``)."""

    prompt_id: str
    prompt: str
    response: str = blank()  # the answer that was critiqued
    critique: str = blank()
    principle_id: str
    initial_response: str = blank("")
    kind: str = "harmful"
    source: str = blank("")
    sample_index: int = 0
    round: int = 1
    rounds: int = 1
    steps_json: str = "[]"
    strategy: str = "critique-revise"
    policy_version: int = 0
    critic_version: int = 0
    constitution_version: str = blank("")
    seed: int = 0
    prompt_created_at: float = 0.0
    created_at: float = 0.0


class CompareRecord(WireRecord, validation=True, serializer="json"):
    """A pair of answers for the judge (topic ``compare``).

    ``pair`` says where they came from: "initial-vs-final" (policy answer vs last revision),
    "policy-samples" (two samples from the policy), "contrastive" (filled by the compare stage)
    or "answer-vs-decline" (a helpful prompt's answer vs the constitution's bare decline).
    """

    prompt_id: str
    prompt: str
    response_a: str = blank()
    response_b: str = blank()
    pair: str = "initial-vs-final"
    pair_index: int = 0
    kind: str = "harmful"
    source: str = blank("")
    strategy: str = "critique-revise"
    policy_version: int = 0
    constitution_version: str = blank("")
    seed: int = 0
    prompt_created_at: float = 0.0
    created_at: float = 0.0


# ---- outputs the trainer reads ------------------------------------------------------------------

class SFTRecord(WireRecord, validation=True, serializer="json"):
    """A finished critique-revision chain (topic ``sft``): train on ``prompt`` -> ``response``."""

    prompt_id: str
    prompt: str
    response: str = blank()  # final revision
    initial_response: str = blank("")
    kind: str = "harmful"
    strategy: str = "critique-revise"
    policy_version: int = 0
    constitution_version: str = blank("")
    steps_json: str = "[]"              # [{round, principle_id, critique, revision, ...}]
    created_at: float = 0.0
    record_id: str = blank("")  # stable id: duplicates after a crash share it
    sample_index: int = 0
    source: str = blank("")
    rounds: int = 0
    critic_version: int = 0
    reviser_version: int = 0
    seed: int = 0
    prompt_created_at: float = 0.0
    # How the response was cleaned for training (agents/targets.py): "kept", "cut" or "dropped"
    # (then ``response`` is empty and the trainer skips the record); "" before cleaning existed.
    target: str = blank("")
    target_note: str = blank("")
    raw_response: str = blank("")  # the answer before cleaning, when it was cut or dropped


class PreferenceRecord(WireRecord, validation=True, serializer="json"):
    """A soft-labelled preference pair (topic ``preferences``), TRL field names.

    ``strategy`` names how the label was made (one of PREFERENCE_STRATEGIES; records written
    before preference strategies existed say "critique-revise" and were judged);
    ``revision_strategy`` names how the revised answer in the pair was made, if there is one.
    """

    prompt_id: str
    prompt: str
    chosen: str = blank()
    rejected: str = blank()
    p_chosen: float = 0.5               # P(chosen is better), averaged over orders/principles
    orders_agree: bool = True
    principle_ids: str = blank("")  # comma-separated comparison principle ids
    policy_version: int = 0
    judge_version: int = 0
    strategy: str = "critique-revise"
    created_at: float = 0.0
    record_id: str = blank("")
    pair: str = "initial-vs-final"
    kind: str = "harmful"
    source: str = blank("")
    constitution_version: str = blank("")
    probs_json: str = "[]"              # per (principle, order) P(first-listed answer wins)
    seed: int = 0
    prompt_created_at: float = 0.0
    revision_strategy: str = blank("")
    # How ``chosen`` was cleaned for training (agents/targets.py), as on SFTRecord.
    target: str = blank("")
    target_note: str = blank("")
    raw_chosen: str = blank("")


class PolicyVersionRecord(WireRecord, validation=True, serializer="json"):
    """A new policy version is serving (topic ``policy-versions``)."""

    version: int
    checkpoint: str = blank("")
    metrics_json: str = "{}"
    created_at: float = 0.0


class DeadLetterRecord(WireRecord, validation=True, serializer="json"):
    """A message a stage could not process, with the reason and the (truncated) raw payload."""

    stage: str
    reason: str = blank()
    topic: str = blank("")
    partition: int = -1
    offset: int = -1
    key: str = blank("")
    prompt_id: str = "-"
    round: int = 0
    attempts: int = 0
    payload: str = blank("")  # raw bytes decoded with errors="replace", truncated
    payload_bytes: int = 0
    truncated: bool = False
    created_at: float = 0.0


class RLSampleRecord(WireRecord, validation=True, serializer="json"):
    """One answer the trainer sampled in an online RL (RLOO) round, as the reward model scored
    it (topic ``rl-samples``): what the monitor and the dashboard show of RL.

    ``sample`` is the answer's index among the prompt's k samples; ``advantage`` is its reward
    minus the mean reward of the prompt's other k-1 samples (the leave-one-out baseline).
    ``policy_version`` sampled it, ``reward_version`` scored it, in ``trainer_round``.
    """

    prompt_id: str
    prompt: str
    answer: str = blank()
    reward: float
    kind: str = "harmful"
    sample: int = 0
    advantage: float = 0.0
    completion_tokens: int = 0
    policy_version: int = 0
    reward_version: int = 0
    trainer_round: int = 0
    source: str = blank("")
    seed: int = 0
    record_id: str = blank("")
    created_at: float = 0.0


RECORDS: dict[str, type[WireRecord]] = {
    "prompts": PromptRecord,
    "critique": CritiqueRecord,
    "revise": ReviseRecord,
    "compare": CompareRecord,
    "sft": SFTRecord,
    "preferences": PreferenceRecord,
    "policy-versions": PolicyVersionRecord,
    "dead-letter": DeadLetterRecord,
    "rl-samples": RLSampleRecord,
}

R = TypeVar("R", bound=WireRecord)


@functools.cache
def _field_types(cls: type[WireRecord]) -> dict[str, tuple[type, bool]]:
    """{field: (python type, required)} from the class annotations (once per class:
    ``get_type_hints`` was a fifth of the worker's time with instant models)."""
    hints = typing.get_type_hints(cls)
    fields = cls._options.fields
    defaults = cls._options.defaults
    return {name: (hints[name], name not in defaults) for name in fields}


_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _check_value(cls_name: str, field: str, kind: type, value: Any) -> Any:
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and not -INT64 <= value < INT64:
            raise RecordError(cls_name, field, "is outside the 64-bit integer range")
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise RecordError(cls_name, field, f"must be a finite number, got {value}")
        value = float(value) if ok else value
    elif kind is str:
        ok = isinstance(value, str)
        if ok and not _encodable(value):
            raise RecordError(cls_name, field, "holds a lone surrogate (not encodable as UTF-8)",
                              "send valid Unicode text")
    else:  # pragma: no cover - records are flat by design
        ok = True
    if not ok:
        raise RecordError(cls_name, field,
                          f"expected {_JSON_NAMES.get(kind, kind.__name__)}, got "
                          f"{type(value).__name__} {_short(value)}",
                          f"send {field} as {_JSON_NAMES.get(kind, kind.__name__)}")
    return value


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class _Invalid:
    """What ``parse_json`` returns for text that is not JSON (or too deep, or too large)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def parse_json(text: Any) -> Any:
    """``json.loads`` that never raises: an ``_Invalid`` (with the reason) for anything that is
    not JSON, nested too deeply (RecursionError) or holds an integer past the digit limit."""
    try:
        return json.loads(text)
    except RecursionError:
        return _Invalid("JSON nested too deeply")
    except (ValueError, TypeError) as exc:  # JSONDecodeError, the int digit limit
        return _Invalid(f"not JSON ({str(exc)[:120]})")


def json_value(text: Any, default: Any) -> Any:
    """A ``*_json`` field's value for readers, or ``default`` when it is not of the same type
    (records that reached a reader undecoded, e.g. from an older producer)."""
    value = parse_json(text) if text else default
    return value if isinstance(value, type(default)) else default


_STEP_TYPES = {"round": int, "principle_id": str, "critique": str, "revision": str,
               "strategy": str, "raw_revision": str, "revision_rejected": bool}


def _steps_shape(value: Any) -> str | None:
    if isinstance(value, _Invalid):
        return value.reason
    if not isinstance(value, list) or not all(isinstance(step, dict) for step in value):
        return "must be a JSON list of objects"
    for step in value:
        for key, kind in _STEP_TYPES.items():
            if key in step and not (isinstance(step[key], kind)
                                    and not (kind is int and isinstance(step[key], bool))):
                return f"step field {key!r} must be {_JSON_NAMES[kind]}"
    return None


def _number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _probs_shape(value: Any) -> str | None:
    if isinstance(value, _Invalid):
        return value.reason
    if not isinstance(value, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and all(map(_number, pair))
            for pair in value):
        return "must be a JSON list of [number, number] pairs"
    return None


def _metrics_shape(value: Any) -> str | None:
    if isinstance(value, _Invalid):
        return value.reason
    if not isinstance(value, dict) or not all(
            v is None or isinstance(v, (int, float, str, bool)) for v in value.values()):
        return "must be a JSON object of numbers"
    return None


# Text fields that hold JSON, and the shape their readers rely on.
JSON_FIELDS = {"steps_json": _steps_shape, "probs_json": _probs_shape,
               "metrics_json": _metrics_shape}


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def from_dict(cls: type[R], data: Any) -> R:
    """Build a record from a decoded JSON value, strictly typed; unknown keys are dropped."""
    name = cls.__name__
    if not isinstance(data, dict):
        raise RecordError(name, None, f"expected a JSON object, got {type(data).__name__}",
                          "send one JSON object per message")
    values = {}
    for field, (kind, required) in _field_types(cls).items():
        if field not in data or data[field] is None:
            if required:
                raise RecordError(name, field, "is missing", f"add {field!r} to the message")
            continue
        values[field] = _check_value(name, field, kind, data[field])
    try:
        return cls(**values)
    except RecordError:
        raise
    except faust.exceptions.ValidationError as exc:
        field = getattr(getattr(exc, "field", None), "field", None)
        raise RecordError(name, field, str(exc.reason) if hasattr(exc, "reason") else str(exc),
                          f"give {field!r} a non-empty value" if field else "") from exc
    except (TypeError, ValueError, RecursionError) as exc:
        raise RecordError(name, None, str(exc)[:400]) from exc


def decode(cls: type[R], raw: bytes | str | dict) -> R:
    """Decode one message (bytes, text or dict) into ``cls``; raises RecordError."""
    name = cls.__name__
    if isinstance(raw, dict):
        return from_dict(cls, raw)
    if isinstance(raw, (bytes, bytearray, memoryview)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RecordError(name, None, f"payload is not valid UTF-8 ({exc.reason} at byte "
                              f"{exc.start})",
                              "encode messages as UTF-8 JSON") from exc
    if raw is None:
        raise RecordError(name, None, "empty message (tombstone)", "send a JSON object")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RecordError(name, None, f"payload is not JSON ({exc.msg} at char {exc.pos})",
                          "send one JSON object per message") from exc
    except RecursionError:
        raise RecordError(name, None, "payload is JSON nested too deeply",
                          "send one flat JSON object per message") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise RecordError(name, None, f"payload is not usable JSON ({str(exc)[:120]})",
                          "send one flat JSON object per message") from None
    return from_dict(cls, data)


def encode(record: WireRecord) -> bytes:
    """The JSON bytes that go on the wire (faust adds a ``__faust`` key that readers ignore)."""
    return record.dumps(serializer="json")


def to_dict(record: WireRecord) -> dict:
    """Plain field dict, without faust's marker: what export writes for TRL / datasets."""
    return {field: getattr(record, field) for field in record._options.fields}


def stamp(record: R) -> R:
    """Set ``created_at`` to now (records are built before they are sent)."""
    record.created_at = now()
    return record
