"""Every invalid message the fuzzer makes is rejected by every reader, and never raises
anything but the reader's own error: the stages' decode, the trainer's parsers, the monitor's
and the dashboard's message reader, `cai export`'s and `cai dead-letter`'s decode."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from benchmarks import fuzz
from streams.records import RECORDS, RecordError, decode, json_value
from streams.topic_stats import message_record


@pytest.mark.parametrize("topic", fuzz.READ_TOPICS)
def test_every_fuzzed_message_is_a_record_error(topic):
    messages = fuzz.messages(topic, 400, "t")
    assert len(set(messages)) == len(messages)
    for value in messages:
        with pytest.raises(RecordError):
            decode(RECORDS[topic], value)
        message = SimpleNamespace(value=value, timestamp=0)
        assert message_record(message, RECORDS[topic]) is None
    decode(RECORDS[topic], json.dumps(fuzz.BASE[topic]).encode())  # the base is valid


@pytest.mark.parametrize("topic", ("sft", "preferences"))
def test_the_trainer_skips_them_as_bad_records(topic):
    from trainer.data import BadRecord, parse_preference, parse_sft

    parse = parse_sft if topic == "sft" else parse_preference
    for value in fuzz.messages(topic, 200, "t"):
        with pytest.raises(BadRecord):
            parse(value)


def test_the_trainer_loop_counts_and_dead_letters_anything_it_cannot_read(tmp_path):
    from trainer.loop import Message, TrainerLoop, _Pending

    loop = TrainerLoop.__new__(TrainerLoop)  # only what _ingest touches
    loop.offsets, loop._pending = {}, _Pending()
    loop.sft_topic, loop.preferences_topic = "cai.sft", "cai.preferences"
    values = fuzz.messages("sft", 50, "t")
    for offset, value in enumerate(values):
        loop._ingest(Message("cai.sft", 0, offset, value))
    assert len(loop._pending.bad) == 50 and len(loop._pending.dead_letters) == 50
    letter = loop._pending.dead_letters[0]
    assert letter.stage == "trainer" and letter.offset == 0 and letter.reason
    assert loop.offsets == {"cai.sft/0": 50}


def test_json_fields_of_undecoded_records_read_safely():
    assert json_value("[" * 5000, []) == []
    assert json_value('{"a": 1}', []) == []
    assert json_value("1" * 5000, {}) == {}
    assert json_value('[{"round": 1}]', []) == [{"round": 1}]
