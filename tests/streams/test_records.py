"""Wire records: round trips for every topic, strict validation with field-named errors."""

from __future__ import annotations

import json

import pytest

from streams.records import (
    RECORDS,
    CompareRecord,
    CritiqueRecord,
    DeadLetterRecord,
    PolicyVersionRecord,
    PreferenceRecord,
    PromptRecord,
    RecordError,
    ReviseRecord,
    RLSampleRecord,
    SFTRecord,
    decode,
    encode,
    to_dict,
)
from streams.topics import TOPICS

SAMPLES = {
    "prompts": PromptRecord(prompt_id="p1", prompt="How?", kind="helpful", source="benign",
                            created_at=1.5),
    "critique": CritiqueRecord(prompt_id="p1", prompt="How?", response="", initial_response="a",
                               round=2,
                               rounds=4, steps_json='[{"round": 1}]', policy_version=2,
                               constitution_version="v1", seed=3),
    "revise": ReviseRecord(prompt_id="p1", prompt="How?", response="a", critique="c",
                           principle_id="x",
                           round=1, critic_version=5),
    "compare": CompareRecord(prompt_id="p1", prompt="How?", response_a="a", response_b="b",
                             pair_index=1),
    "sft": SFTRecord(prompt_id="p1", prompt="How?", response="r", initial_response="a",
                     kind="harmful",
                     strategy="critique-revise", policy_version=1, constitution_version="v1",
                     steps_json="[]", created_at=2.0, record_id="sft:p1:0"),
    "preferences": PreferenceRecord(prompt_id="p1", prompt="How?", chosen="c", rejected="r",
                                    p_chosen=0.8,
                                    orders_agree=False, principle_ids="a,b", policy_version=1,
                                    judge_version=2,
                                    strategy="critique-revise", created_at=3.0),
    "policy-versions": PolicyVersionRecord(version=3, checkpoint="ckpt/3",
                                           metrics_json='{"loss": 1.0}',
                                           created_at=4.0),
    "dead-letter": DeadLetterRecord(stage="policy", reason="bad", payload="{", payload_bytes=1),
    "rl-samples": RLSampleRecord(prompt_id="p1", prompt="How?", kind="helpful", answer="Like so.",
                                 sample=2, reward=0.75, advantage=-0.125, completion_tokens=3,
                                 policy_version=4, reward_version=2, trainer_round=5,
                                 record_id="rl:5:p1:2", created_at=5.0),
}


def test_every_topic_has_a_record_type():
    assert set(RECORDS) == set(TOPICS)


@pytest.mark.parametrize("topic", TOPICS)
def test_round_trip(topic):
    record = SAMPLES[topic]
    wire = encode(record)
    data = json.loads(wire)
    assert "__faust" in data                      # faust's marker travels along ...
    back = decode(RECORDS[topic], wire)           # ... and is ignored on the way in
    assert type(back) is type(record) and to_dict(back) == to_dict(record)


def test_contract_fields_of_trainer_records():
    sft = set(SFTRecord._options.fields)
    assert {"prompt_id", "prompt", "response", "initial_response", "kind", "strategy",
            "policy_version",
            "constitution_version", "steps_json", "created_at"} <= sft
    pref = set(PreferenceRecord._options.fields)
    assert {"prompt_id", "prompt", "chosen", "rejected", "p_chosen", "orders_agree",
            "principle_ids",
            "policy_version", "judge_version", "strategy", "created_at"} <= pref
    assert {"version", "checkpoint", "metrics_json",
            "created_at"} <= set(PolicyVersionRecord._options.fields)


def test_old_messages_decode_with_defaults_and_unknown_keys_are_ignored():
    rec = decode(SFTRecord, {"prompt_id": "p", "prompt": "q", "response": "r",
                             "from_the_future": 1})
    assert rec.steps_json == "[]" and rec.policy_version == 0 and rec.kind == "harmful"
    assert "from_the_future" not in to_dict(rec)


@pytest.mark.parametrize("payload, field, words", [
    ({"prompt_id": 1, "prompt": "q"}, "prompt_id", "expected a string, got int"),
    ({"prompt": "q"}, "prompt_id", "is missing"),
    ({"prompt_id": "p", "prompt": None}, "prompt", "is missing"),
    ({"prompt_id": "p", "prompt": ""}, "prompt", "blank"),
    ({"prompt_id": "", "prompt": "q"}, "prompt_id", "non-empty"),
    ({"prompt_id": "p", "prompt": "q", "kind": "evil"}, "kind", "not one of harmful, helpful"),
    ({"prompt_id": "p", "prompt": "q", "created_at": "yesterday"}, "created_at",
     "expected a number"),
])
def test_invalid_prompts_are_rejected_naming_the_field(payload, field, words):
    with pytest.raises(RecordError) as info:
        decode(PromptRecord, json.dumps(payload).encode())
    assert info.value.field == field
    assert f"PromptRecord.{field}" in str(info.value) and words in str(info.value)


@pytest.mark.parametrize("payload, field", [
    ({"p_chosen": 1.5}, "p_chosen"), ({"p_chosen": True}, "p_chosen"),
    ({"p_chosen": float("nan")}, "p_chosen"),
    ({"orders_agree": "yes"}, "orders_agree"), ({"policy_version": 1.5}, "policy_version"),
    ({"strategy": "magic"}, "strategy"),
])
def test_invalid_preferences_are_rejected(payload, field):
    base = {"prompt_id": "p", "prompt": "q", "chosen": "a", "rejected": "b"}
    with pytest.raises(RecordError) as info:
        decode(PreferenceRecord, {**base, **payload})
    assert info.value.field == field


def test_model_output_may_be_empty_but_must_be_present():
    assert decode(SFTRecord, {"prompt_id": "p", "prompt": "q", "response": ""}).response == ""
    with pytest.raises(RecordError, match="SFTRecord.response: is missing"):
        decode(SFTRecord, {"prompt_id": "p", "prompt": "q"})


@pytest.mark.parametrize("raw, words", [
    (b"{oops", "not JSON"), (b"\xff\xfe", "not valid UTF-8"), (b"[1, 2]", "expected a JSON object"),
    (b"null", "expected a JSON object"),
])
def test_undecodable_payloads(raw, words):
    with pytest.raises(RecordError, match=words):
        decode(PromptRecord, raw)


def test_negative_round_is_rejected():
    with pytest.raises(RecordError, match="CritiqueRecord.round: must be >= 0"):
        decode(CritiqueRecord, {"prompt_id": "p", "prompt": "q", "response": "r", "round": -1})


RL_BASE = {"prompt_id": "p", "prompt": "q", "answer": "a", "reward": 0.5}


def test_rl_sample_contract_fields_and_defaults():
    assert {"prompt_id", "prompt", "kind", "answer", "sample", "reward", "advantage",
            "completion_tokens", "policy_version", "reward_version", "trainer_round",
            "record_id", "created_at"} <= set(RLSampleRecord._options.fields)
    rec = decode(RLSampleRecord, {**RL_BASE, "answer": ""})  # a model may answer nothing
    assert (rec.sample, rec.advantage, rec.trainer_round, rec.kind) == (0, 0.0, 0, "harmful")


@pytest.mark.parametrize("payload, field, words", [
    ({"reward": None}, "reward", "is missing"),
    ({"answer": None}, "answer", "is missing"),
    ({"reward": "high"}, "reward", "expected a number"),
    ({"reward": float("inf")}, "reward", "finite"),
    ({"advantage": float("nan")}, "advantage", "finite"),
    ({"sample": -1}, "sample", ">= 0"),
    ({"trainer_round": -2}, "trainer_round", ">= 0"),
    ({"completion_tokens": -3}, "completion_tokens", ">= 0"),
    ({"sample": 1.5}, "sample", "expected an integer"),
    ({"kind": "evil"}, "kind", "not one of"),
    ({"prompt_id": ""}, "prompt_id", "non-empty"),
])
def test_invalid_rl_samples_are_rejected_naming_the_field(payload, field, words):
    with pytest.raises(RecordError) as info:
        decode(RLSampleRecord, json.dumps({**RL_BASE, **payload}).encode())
    assert info.value.field == field and words in str(info.value)


def test_an_rl_sample_with_a_nan_reward_cannot_be_built():
    """The producer side: the trainer cannot send a reward that every reader would reject."""
    with pytest.raises(RecordError, match="RLSampleRecord.reward: must be a finite number"):
        RLSampleRecord(prompt_id="p", prompt="q", answer="a", reward=float("nan"))
