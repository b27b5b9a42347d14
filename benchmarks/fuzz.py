"""Invalid messages for every topic the project reads, each unique and invalid by construction.

``messages(topic, n, tag)`` returns ``n`` payloads for ``topic``: a valid record of that topic
with one mutation that ``streams.records.decode`` must reject (not UTF-8, not JSON, not an
object, nested too deeply, an integer past the digit limit or int64, a lone surrogate, a
missing or mistyped field, an id too long, a NaN, a bad ``*_json`` field ...). Every payload
carries ``tag`` and its index, so no two are equal (stages dead-letter each distinct payload
once) and each can be found again in the dead-letter topic. Pure functions; used by the
fault-injection harness (``benchmarks/chaos.py``) and the tests.
"""

from __future__ import annotations

import json
import random

from streams import topics
from streams.records import MAX_ID_CHARS

# A valid record of each topic the project reads (the mutations make it invalid).
BASE: dict[str, dict] = {
    topics.PROMPTS: {"prompt_id": "p", "prompt": "How do I bake bread?", "kind": "helpful"},
    topics.CRITIQUE: {"prompt_id": "p", "prompt": "q", "response": "a", "round": 1, "rounds": 1,
                      "steps_json": "[]"},
    topics.REVISE: {"prompt_id": "p", "prompt": "q", "response": "a", "critique": "c",
                    "principle_id": "harm", "steps_json": "[]"},
    topics.COMPARE: {"prompt_id": "p", "prompt": "q", "response_a": "a", "response_b": "b"},
    topics.SFT: {"prompt_id": "p", "prompt": "q", "response": "a", "record_id": "r",
                 "steps_json": "[]"},
    topics.PREFERENCES: {"prompt_id": "p", "prompt": "q", "chosen": "a", "rejected": "b",
                         "p_chosen": 0.7, "record_id": "r", "probs_json": "[]"},
    topics.POLICY_VERSIONS: {"version": 2, "checkpoint": "x", "metrics_json": "{}"},
    topics.DEAD_LETTER: {"stage": "policy", "reason": "r", "payload": "x"},
    topics.RL_SAMPLES: {"prompt_id": "p", "prompt": "q", "answer": "a", "reward": 0.5,
                        "sample": 1, "trainer_round": 2},
}
READ_TOPICS = tuple(BASE)


def _mutations(topic: str) -> list:
    """Functions (base dict, unique tag) -> invalid bytes for ``topic``."""
    base = BASE[topic]
    id_field = "prompt_id" if "prompt_id" in base else ("version" if "version" in base
                                                       else "stage")
    text_field = next(k for k in ("prompt", "checkpoint", "reason") if k in base)
    required = id_field

    def with_(**changes):
        return lambda b, tag: json.dumps({**b, **changes, "fuzz": tag}).encode()

    out = [
        lambda b, tag: b"\xff\xfe\x00" + tag.encode() + bytes(random.randrange(256)
                                                              for _ in range(16)),
        lambda b, tag: b"{not json " + tag.encode(),
        lambda b, tag: json.dumps([tag, b]).encode(),
        lambda b, tag: json.dumps(tag).encode(),
        lambda b, tag: ("[" * 3000 + json.dumps(tag) + "]" * 3000).encode(),
        lambda b, tag: f'{{"fuzz": "{tag}", "{text_field}": {"9" * 5000}}}'.encode(),
        lambda b, tag: json.dumps({k: v for k, v in b.items() if k != required}
                                  | {"fuzz": tag}).encode(),
        with_(**{required: None}),
        with_(**{text_field: ["not", "a", "string"]}),
        with_(**{text_field: 12345}),
        lambda b, tag: (json.dumps({**b, "fuzz": tag})[:-1] + ', "created_at": NaN}').encode(),
        lambda b, tag: (json.dumps({**b, "fuzz": tag})[:-1] + ', "created_at": 1e999}').encode(),
    ]
    if id_field == "prompt_id":
        out += [with_(prompt_id="\ud800" + "x"),  # json.dumps escapes it: valid JSON
                with_(prompt_id="x" * (MAX_ID_CHARS + 1)),
                with_(prompt_id=""),
                with_(prompt_id=7),
                with_(kind="evil"),
                with_(round=2**70) if "round" in base else with_(created_at="yesterday")]
    elif id_field == "version":
        out += [with_(version="2"), with_(version=2**70), with_(version=True)]
    else:
        out += [with_(stage=["x"]), with_(offset="1"), with_(truncated="yes")]
    if "steps_json" in base:
        out += [with_(steps_json="[1, 2]"), with_(steps_json="[" * 3000),
                with_(steps_json='[{"round": "one"}]'), with_(steps_json="{}")]
    if "probs_json" in base:
        out += [with_(probs_json="[[0.5]]"), with_(probs_json='[["a", "b"]]'),
                with_(p_chosen=1.5), with_(p_chosen="0.5")]
    if "metrics_json" in base:
        out += [with_(metrics_json="[]"), with_(metrics_json='{"a": {"b": 1}}')]
    return out


def messages(topic: str, n: int, tag: str, seed: int = 0) -> list[bytes]:
    """``n`` distinct invalid payloads for ``topic``, cycling through its mutations."""
    random.seed(f"{seed}-{topic}-{tag}")
    mutations = _mutations(topic)
    return [mutations[i % len(mutations)](BASE[topic], f"{tag}-{i}") for i in range(n)]
