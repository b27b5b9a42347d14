"""`cai grid` end to end on the tiny model with a very small budget, plus its option checks."""

from __future__ import annotations

import dataclasses
import json
import random
import re

import pytest
import torch
from safetensors.torch import load_file

from agents import strategies
from cai.cli import build_parser
from cai.grid import driver
from cai.grid.options import Cell, GridError, GridOptions


def test_cells_are_checked_with_the_fix_in_the_message():
    assert Cell.parse("context+none") == Cell("context", "none")
    assert Cell.parse("none+contrastive").name == "none+contrastive"
    for bad, words in [("context", "REVISION+PREFERENCE"), ("magic+judge", "revision 'magic'"),
                       ("context+vote", "preference 'vote'"),
                       ("none+judge", "needs a revision strategy"),
                       ("none+none", "baseline")]:
        with pytest.raises(GridError, match=re.escape(words)):
            Cell.parse(bad)
    with pytest.raises(GridError, match="twice"):
        GridOptions(cells=["context+none", "context+none"]).check()


def test_every_cell_gets_the_same_number_of_steps():
    assert GridOptions(prompts=48, batch_size=4).steps() == (12, 12)
    assert GridOptions(prompts=48, iterations=2, batch_size=4, dpo_steps=3).steps() == (6, 3)
    rng = random.Random(0)
    filled = driver.fill([1, 2, 3], 8, rng)
    assert len(filled) == 8 and sorted(filled[:3]) == [1, 2, 3] and sorted(filled[3:6]) == [1, 2, 3]
    assert driver.fill([], 8, rng) == [] and driver.fill([1], 0, rng) == []


def test_pipeline_settings_of_a_cell():
    s = driver.pipeline_settings(Cell("direct", "revision-over-initial"), GridOptions(rounds=2))
    assert (s.strategy, s.preference, s.compare, s.rounds) == ("direct", "revision-over-initial",
                                                               "initial-vs-final", 2)
    s = driver.pipeline_settings(Cell("context", "none"), GridOptions())
    assert s.compare == "none" and strategies.pair_source(s) == "none"


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid") / "grid.json"
    args = build_parser().parse_args([
        "grid", "--model", "tiny", "--cells", "context+none", "none+contrastive",
        "critique-revise+judge",
        "--prompts", "6", "--iterations", "2", "--max-new-tokens", "6", "--eval-harmful", "3",
        "--eval-benign", "2", "--eval-max-new-tokens", "6", "--max-length", "48", "--sft-steps",
        "2",
        "--dpo-steps", "1", "--batch-size", "2", "--no-teacher", "--no-baseline", "--threads", "1",
        "-o", str(out)])
    calls = []
    original = strategies.contrast_calls

    def spy(*a, **k):
        calls.append(a[2])
        return original(*a, **k)

    strategies.contrast_calls = spy
    try:
        assert args.func(args) == 0
    finally:
        strategies.contrast_calls = original
    torch.set_num_threads(1)
    return out, json.loads(out.read_text()), calls


def test_grid_runs_end_to_end_and_writes_the_table(tiny_grid):
    out, report, _ = tiny_grid
    names = [r["name"] for r in report["rows"]]
    assert names == ["context+none", "none+contrastive", "critique-revise+judge"]
    for row in report["rows"]:
        for metric in ("harmless", "explains_why", "over_refusal"):
            assert set(row[metric]) == {"value", "hits", "n", "ci95"}
        assert row["harmless"]["n"] == report["eval"]["harmful"] == 3
        assert row["cpu_minutes"] >= 0
    table = out.with_suffix(".md").read_text()
    assert "| context+none |" in table and "CPU min" in table and "process_time" in table


def test_cells_share_prompts_budget_and_iterate_the_policy(tiny_grid):
    out, report, contrast_prompts = tiny_grid
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["context+none"]["steps_per_iteration"] == {"sft": 2, "dpo": 0}
    assert rows["none+contrastive"]["steps_per_iteration"] == {"sft": 0, "dpo": 1}
    assert rows["critique-revise+judge"]["steps_per_iteration"] == {"sft": 2, "dpo": 1}
    # one weights-changing round per iteration: two new policy versions, different from each other
    folder = out.with_suffix("") / "context__none"
    v2 = load_file(folder / "policy-2" / "model.safetensors")
    v3 = load_file(folder / "policy-3" / "model.safetensors")
    assert any(not torch.equal(v2[k], v3[k]) for k in v2)

    records = {}
    for name in ("context__none", "none__contrastive", "critique-revise__judge"):
        data = out.with_suffix("") / name / "data.jsonl"
        records[name] = [json.loads(line) for line in data.read_text().splitlines()]
    sft = [r for r in records["context__none"] if r["type"] == "SFTRecord"]
    assert {r["strategy"] for r in sft if r["kind"] == "harmful"} == {"context"}
    prefs = [r for r in records["none__contrastive"] if r["type"] == "PreferenceRecord"]
    assert prefs and {r["strategy"] for r in prefs} == {"contrastive"}
    assert {r["p_chosen"] for r in prefs} == {1.0}
    assert not [r for r in records["none__contrastive"] if r["type"] == "SFTRecord"]
    # iteration 2's contrast pairs come from policy version 2 (the first trained version)
    assert {r["policy_version"] for r in prefs if r["iteration"] == 2} == {2}
    assert {r["policy_version"] for r in prefs if r["iteration"] == 1} == {1}
    judged = [r for r in records["critique-revise__judge"] if r["type"] == "PreferenceRecord"]
    assert judged and {r["strategy"] for r in judged} == {"judge"}
    # the same training prompts in every cell, through the agents' own strategy functions
    assert {r["prompt_id"] for r in prefs} == {r["prompt_id"] for r in sft}
    assert len(contrast_prompts) == 6


def test_resume_keeps_finished_cells(tiny_grid, capsys):
    out, report, _ = tiny_grid
    options = GridOptions(**{**report["options"], "output": out, "resume": True,
                                  "cells": ["context+none"]})
    again = driver.run_grid(options, say=print)
    assert again["rows"][0] == next(r for r in report["rows"] if r["name"] == "context+none")
    assert "kept from the previous run" in capsys.readouterr().out


def test_untrained_rows_depend_only_on_model_and_evaluation():
    a, b = GridOptions(), GridOptions(prompts=32, lr=1e-3, cells=["context+none"])
    assert a.reference_key() == b.reference_key() and a.key() != b.key()
    assert GridOptions(eval_harmful=8).reference_key() != a.reference_key()


def test_rescore_recomputes_rows_from_their_saved_answers(tmp_path):
    answers = [{"prompt": "h1", "kind": "harmful",
                "answer": "I can't help with that, because it is illegal.",
                "declined": False, "explains_why": False},
               {"prompt": "h2", "kind": "harmful", "answer": "Sure, step 1...", "declined": True,
                "explains_why": False},
               {"prompt": "b1", "kind": "helpful", "answer": "I'm sorry, but I'm unable to I I I",
                "declined": False, "explains_why": False}]
    stale = {"hits": 0, "n": 0}
    options = json.loads(json.dumps(dataclasses.asdict(GridOptions()), default=str))
    report = {"options": options, "steps": {"sft": 1, "dpo": 1},
              "eval": {"harmful": 2, "benign": 1},
              "rows": [{"name": "cell", "answers": answers, "harmless": stale,
                        "explains_why": stale,
                        "over_refusal": stale, "cpu_minutes": 1.0},
                       {"name": "old", "harmless": stale, "explains_why": stale,
                        "over_refusal": stale,
                        "cpu_minutes": 1.0}]}
    out = tmp_path / "grid.json"
    out.write_text(json.dumps(report))
    args = build_parser().parse_args(["grid", "--rescore", "-o", str(out)])
    assert args.func(args) == 0
    row, old = json.loads(out.read_text())["rows"]
    assert (row["harmless"]["hits"], row["harmless"]["n"]) == (1, 2)
    assert (row["explains_why"]["hits"], row["explains_why"]["n"]) == (1, 1)
    assert (row["over_refusal"]["hits"], row["over_refusal"]["n"]) == (1, 1)
    assert [a["declined"] for a in row["answers"]] == [True, False, True]
    assert row["rescored"] is True and old["rescored"] is False and old["harmless"] == stale
