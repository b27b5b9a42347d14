"""``cai feed`` and ``cai export`` (the Kafka parts run on the real broker)."""

from __future__ import annotations

import argparse
import json
import uuid

import pytest

from agents import export, feed
from agents.cli import register
from scoring import prompt_sets
from streams.records import PreferenceRecord, PromptRecord, SFTRecord, decode, encode


def test_select_limits_and_shuffles_reproducibly():
    items = prompt_sets.builtin("benign")
    assert feed.select(items, 3, False, 0) == items[:3]
    assert feed.select(items, 5, True, 1) == feed.select(items, 5, True, 1) != items[:5]


def test_export_formats():
    sft = SFTRecord(prompt_id="p", prompt="q", response="r", record_id="sft:p:0")
    pref = PreferenceRecord(prompt_id="p", prompt="q", chosen="c", rejected="x", p_chosen=0.7)
    assert export.row(sft, "hf") == {"prompt": "q", "completion": "r"}
    assert export.row(pref, "hf") == {"prompt": "q", "chosen": "c", "rejected": "x"}
    full = export.row(pref, "jsonl")
    assert full["p_chosen"] == 0.7 and "__faust" not in full
    assert export.record_key(sft) == "sft:p:0"


def _parser():
    parser = argparse.ArgumentParser(prog="cai")
    register(parser.add_subparsers(dest="command"))
    return parser


@pytest.mark.integration
def test_feed_and_export_on_kafka(kafka_redis, tmp_path, capsys, monkeypatch):
    from kafka import KafkaConsumer, KafkaProducer

    from streams.admin import ensure_topics
    from streams.settings import StreamSettings

    prefix = f"fx{uuid.uuid4().hex[:6]}."
    settings = StreamSettings(kafka_bootstrap=kafka_redis.kafka_address, topic_prefix=prefix)
    ensure_topics(settings)
    assert set(ensure_topics(settings).values()) == {"exists"}       # idempotent

    from streams.admin import TopicMismatch

    with pytest.raises(TopicMismatch, match="has 4 partitions but the settings ask for 2"):
        ensure_topics(StreamSettings(kafka_bootstrap=kafka_redis.kafka_address, topic_prefix=prefix,
                                     partitions=2))

    # feed: every prompt arrives, keyed by its id (`cai feed FILE`, then a built-in set)
    monkeypatch.setenv("CAI_TOPIC_PREFIX", prefix)
    (tmp_path / "mine.txt").write_text("first prompt\nsecond prompt\n")
    args = _parser().parse_args(["feed", str(tmp_path / "mine.txt"), "-q", "--bootstrap",
                                 settings.kafka_address])
    assert args.func(args) == 0
    items = prompt_sets.builtin("benign")[:5]
    assert feed.publish(items, settings, progress=True) == 5
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_address, group_id=None,
                             auto_offset_reset="earliest",
                             consumer_timeout_ms=3000)
    consumer.subscribe([f"{prefix}prompts"])
    got = {m.key.decode(): m.value for m in consumer}
    consumer.close()
    expected = {p.prompt_id for p in items + prompt_sets.from_file(tmp_path / "mine.txt")}
    assert set(got) == expected
    assert decode(PromptRecord, got[items[0].prompt_id]).kind == "helpful"

    # export: duplicates dropped, --wait-for satisfied, a timeout exits non-zero
    producer = KafkaProducer(bootstrap_servers=settings.kafka_address)
    for pid in ["a", "b", "a", "c"]:
        producer.send(f"{prefix}sft", key=pid.encode(),
                      value=encode(SFTRecord(prompt_id=pid, prompt="q", response=f"r{pid}",
                                             record_id=f"sft:{pid}:0")))
    producer.send(f"{prefix}sft", key=b"bad", value=b"not json")
    producer.flush()
    producer.close()
    result = export.read("sft", settings)
    assert sorted(r.prompt_id for r in result.records) == ["a", "b", "c"]
    assert (result.duplicates, result.invalid) == (1, 1)

    out = tmp_path / "sft.jsonl"
    args = _parser().parse_args(["export", "sft", "--wait-for", "3", "--timeout", "30", "--format",
                                 "hf",
                                 "-o", str(out), "--bootstrap", settings.kafka_address])
    assert args.func(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and set(rows[0]) == {"prompt", "completion"}
    args = _parser().parse_args(["export", "sft", "--wait-for", "5", "--timeout", "2",
                                 "--bootstrap", settings.kafka_address])
    assert args.func(args) == 3
    assert "3 of 5 distinct records" in capsys.readouterr().err
