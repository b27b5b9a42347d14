"""`cai run`'s recipe reaches the worker as CAI_PIPELINE_* settings (the environment wins) and the
trainer as a config file."""

from __future__ import annotations

import pytest

from agents.settings import PipelineSettings
from cai import run
from core import recipes
from core.settings import StackSettings
from trainer.config import TrainerConfig


def _settings_seen_by_worker(env: dict[str, str], monkeypatch) -> PipelineSettings:
    for name in [n for n in env if not n.startswith("CAI_PIPELINE_")]:
        env.pop(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return PipelineSettings()


def test_default_recipe_is_context_distillation(monkeypatch, tmp_path):
    for name in recipes.worker_env(recipes.RECIPES[recipes.DEFAULT_RECIPE].pipeline):
        monkeypatch.delenv(name, raising=False)
    env = run.child_env(StackSettings(state_dir=tmp_path), run.RunOptions())
    s = _settings_seen_by_worker(env, monkeypatch)
    assert (s.strategy, s.preference, s.context_placement, s.context_temperature,
            s.context_opening) == (
        "context", "contrastive", "user-suffix", 0.0, True)


def test_paper_recipe_and_environment_override(monkeypatch, tmp_path):
    for name in recipes.worker_env(recipes.RECIPES[recipes.DEFAULT_RECIPE].pipeline):
        monkeypatch.delenv(name, raising=False)
    paper = run.child_env(StackSettings(state_dir=tmp_path), run.RunOptions(recipe="paper"))
    assert (paper["CAI_PIPELINE_STRATEGY"],
            paper["CAI_PIPELINE_PREFERENCE"]) == ("critique-revise", "judge")
    monkeypatch.setenv("CAI_PIPELINE_PREFERENCE", "revision-over-initial")
    env = run.child_env(StackSettings(state_dir=tmp_path), run.RunOptions())
    assert env["CAI_PIPELINE_PREFERENCE"] == "revision-over-initial"  # the user's setting wins
    assert env["CAI_PIPELINE_STRATEGY"] == "context"


def test_a_run_is_done_after_a_rejected_round_too_and_reports_why(tmp_path):
    from cai import report
    from streams import topics
    from trainer import checkpoint
    from trainer.config import TrainerConfig

    settings = StackSettings(state_dir=tmp_path)
    snap = {"topics": {"sft": {"total": 4, "lag": {topics.TRAINER_GROUP: 0}},
                       "preferences": {"total": 4, "lag": {topics.TRAINER_GROUP: 0}}}}
    assert not run.pipeline_done(snap, fed=4, rounds_finished=len(run.trainer_rounds(settings)))
    state = checkpoint.RoundState(round=1, promoted=False, policy_weights="base",
                                  reward_weights=None,
                                  policy_version=1, offsets={},
                                  extra={"reasons": ["probe/refusal_rate rose"]})
    checkpoint.write_round(tmp_path / "trainer", state,
                           {"data/sft_helpful": 3.0, "probe/refusal_rate": 0.375},
                           {}, {}, TrainerConfig(), None)
    rounds = run.trainer_rounds(settings)
    assert rounds == [{"round": 1, "promoted": False, "reasons": ["probe/refusal_rate rose"],
                       "metrics": {"data/sft_helpful": 3.0, "probe/refusal_rate": 0.375}}]
    assert run.pipeline_done(snap, fed=4, rounds_finished=len(rounds))
    snap["topics"]["preferences"]["lag"][topics.TRAINER_GROUP] = 2  # pairs not trained yet
    assert not run.pipeline_done(snap, fed=4, rounds_finished=1)
    text = report.markdown({"trainer_rounds": rounds})
    assert "round 1 rejected: probe/refusal_rate rose; examples {'sft_helpful': 3}" in text


def test_the_fed_mix_is_half_benign_and_never_holds_the_refusal_probe_or_held_out_prompts():
    from scoring import splits

    options = run.RunOptions(prompts=24)
    mix = run.training_mix(options)
    benign = [p for p in mix if p.kind == "helpful"]
    assert len(mix) == 24 and len(benign) == 12
    assert not {p.prompt for p in mix} & run.refusal_probe_prompts(options)
    assert len(run.refusal_probe_prompts(options)) == TrainerConfig().refusal_probe_size == 16
    assert not any(splits.is_held_out(p.prompt) for p in mix)
    # The reserved prompts follow the trainer's own config, overrides included.
    larger = run.RunOptions(prompts=24, trainer_overrides={"refusal_probe_size": 24})
    assert len(run.refusal_probe_prompts(larger)) == 24
    assert not {p.prompt for p in run.training_mix(larger)} & run.refusal_probe_prompts(larger)


def test_a_state_folder_refuses_a_run_of_another_model_and_accepts_its_own(tmp_path):
    settings = StackSettings(state_dir=tmp_path / "state")
    run.claim_state(settings, run.RunOptions(model="smollm2"))
    run.claim_state(settings, run.RunOptions(model="smollm2",
                                             prompts=48))  # resuming with more prompts is fine
    with pytest.raises(run.RunStateMismatch,
                       match=r"model 'smollm2', not model 'tiny'.*--state-dir"):
        run.claim_state(settings, run.RunOptions(model="tiny"))
    with pytest.raises(run.RunStateMismatch,
                       match="recipe 'context-distillation', not recipe 'paper'"):
        run.claim_state(settings, run.RunOptions(model="smollm2", recipe="paper"))


def test_the_trainer_gets_the_recipe_as_a_config_file(tmp_path):
    from cai.cli import build_parser
    from stack.children import trainer_argv
    from trainer.cli import build_config

    config = run.trainer_config(run.RunOptions(prompts=8, recipe="context-distillation"))
    assert (config.lr, config.epochs, config.dpo_epochs, config.max_length) == (1e-3, 6, 2, 256)
    assert (config.round_every_examples, config.probe_size, config.refusal_prompts,
            config.staleness_policy) == (12, 1, "benign", "downweight")
    argv = trainer_argv(config.save(tmp_path))
    args = build_parser().parse_args(argv[argv.index("trainer"):])  # what the child parses
    assert build_config(args.config, {}) == config


def test_the_run_options_are_the_flags():
    from cai.cli import build_parser
    from core.options import from_args

    args = build_parser().parse_args(["run", "--prompts", "8", "--recipe", "paper", "--keep",
                                      "--benign-share", "0.25", "--duration", "2"])
    parsed = from_args(run.RunOptions, args)
    assert (parsed.prompts, parsed.recipe, parsed.keep, parsed.benign_share, parsed.duration) == (
        8, "paper", True, 0.25, 2.0)
    assert from_args(run.RunOptions, build_parser().parse_args(["run"])) == run.RunOptions()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--benign-share", "1.5"])


def test_the_worker_takes_a_recipe_where_nothing_else_set_the_field(monkeypatch):
    monkeypatch.setenv("CAI_PIPELINE_POLICY_MAX_NEW_TOKENS", "20")
    settings = recipes.over_settings(PipelineSettings(rounds=3), "context-distillation")
    assert (settings.strategy, settings.preference) == ("context", "contrastive")
    assert settings.policy_max_new_tokens == 20 and settings.rounds == 3


def test_cai_trainer_recipe_gives_the_config_of_cai_run_and_flags_go_on_top(tmp_path):
    from cai.cli import build_parser
    from core.options import given
    from trainer.cli import build_config

    options = run.RunOptions()
    args = build_parser().parse_args(["trainer", "--recipe", options.recipe, "--lr", "0.5"])
    assert build_config(args.config, given(TrainerConfig, args), args.recipe) == TrainerConfig(
        **{**run.trainer_config(options).__dict__, "lr": 0.5})
    config_file = tmp_path / "c.json"
    config_file.write_text('{"epochs": 9}')
    assert build_config(config_file, {}, options.recipe).epochs == 9
