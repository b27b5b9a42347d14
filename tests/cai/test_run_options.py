"""`cai run`'s recipe reaches the worker as CAI_PIPELINE_* settings, and the environment wins."""

from __future__ import annotations

from agents.settings import PipelineSettings
from cai import recipes, run
from cai.settings import StackSettings


def _settings_seen_by_worker(env: dict[str, str], monkeypatch) -> PipelineSettings:
    for name in [n for n in env if not n.startswith("CAI_PIPELINE_")]:
        env.pop(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return PipelineSettings()


def test_default_recipe_is_context_distillation(monkeypatch, tmp_path):
    for name in recipes.RECIPES[recipes.DEFAULT_RECIPE].pipeline:
        monkeypatch.delenv(name, raising=False)
    env = run._child_env(StackSettings(state_dir=tmp_path), run.RunOptions())
    s = _settings_seen_by_worker(env, monkeypatch)
    assert (s.strategy, s.preference, s.context_placement, s.context_temperature, s.context_opening) == (
        "context", "contrastive", "user-suffix", 0.0, True)


def test_paper_recipe_and_environment_override(monkeypatch, tmp_path):
    for name in recipes.RECIPES[recipes.DEFAULT_RECIPE].pipeline:
        monkeypatch.delenv(name, raising=False)
    paper = run._child_env(StackSettings(state_dir=tmp_path), run.RunOptions(recipe="paper"))
    assert (paper["CAI_PIPELINE_STRATEGY"], paper["CAI_PIPELINE_PREFERENCE"]) == ("critique-revise", "judge")
    monkeypatch.setenv("CAI_PIPELINE_PREFERENCE", "revision-over-initial")
    env = run._child_env(StackSettings(state_dir=tmp_path), run.RunOptions())
    assert env["CAI_PIPELINE_PREFERENCE"] == "revision-over-initial"  # the user's setting wins
    assert env["CAI_PIPELINE_STRATEGY"] == "context"
