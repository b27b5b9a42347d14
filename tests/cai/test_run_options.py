"""`cai run`'s rounds, recipe and report: fresh prompts per round, the recipe reaching the worker
as CAI_PIPELINE_* settings (the environment wins) and the trainer as a config file, and the
report's rows per served version; the run serves the dashboard beside them."""

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


def _clear_recipe_env(monkeypatch):
    for recipe in recipes.RECIPES.values():
        for name in recipes.worker_env(recipe.pipeline):
            monkeypatch.delenv(name, raising=False)


def test_default_recipe_is_context_distillation(monkeypatch, tmp_path):
    _clear_recipe_env(monkeypatch)
    env = run.child_env(StackSettings(state_dir=tmp_path), run.RunOptions())
    s = _settings_seen_by_worker(env, monkeypatch)
    expected = recipes.RECIPES[recipes.DEFAULT_RECIPE].pipeline
    assert {name: getattr(s, name) for name in expected} == expected
    assert s.strategy == "context" and s.context_opening


def test_paper_recipe_and_environment_override(monkeypatch, tmp_path):
    _clear_recipe_env(monkeypatch)
    paper = run.child_env(StackSettings(state_dir=tmp_path), run.RunOptions(recipe="paper"))
    assert (paper["CAI_PIPELINE_STRATEGY"],
            paper["CAI_PIPELINE_PREFERENCE"]) == ("critique-revise", "judge")
    monkeypatch.setenv("CAI_PIPELINE_PREFERENCE", "judge")
    env = run.child_env(StackSettings(state_dir=tmp_path), run.RunOptions())
    assert env["CAI_PIPELINE_PREFERENCE"] == "judge"  # the user's setting wins
    assert env["CAI_PIPELINE_STRATEGY"] == "context"


def test_only_the_roles_a_recipe_calls_are_loaded(monkeypatch):
    _clear_recipe_env(monkeypatch)
    from agents.strategies import recipe_roles

    assert recipe_roles("context-distillation") == ("policy",)
    assert recipe_roles("paper") == ("policy", "critic", "reviser", "judge")
    monkeypatch.setenv("CAI_PIPELINE_PREFERENCE", "judge")  # the environment's judge is loaded
    assert recipe_roles("context-distillation") == ("policy", "judge")


def test_the_reward_role_is_loaded_only_for_a_trainer_that_scores_with_it(monkeypatch):
    _clear_recipe_env(monkeypatch)
    from agents.strategies import recipe_roles

    assert all("reward" not in recipe_roles(name) for name in recipes.RECIPES
               if recipes.RECIPES[name].trainer.get("mode") != "rloo")
    base = recipes.RECIPES["context-distillation"]
    monkeypatch.setitem(recipes.RECIPES, "rl-test",
                        recipes.Recipe(pipeline=base.pipeline, trainer={"mode": "rloo"}))
    assert recipe_roles("rl-test") == ("policy", "reward")


def test_each_round_feeds_fresh_training_prompts_benign_by_the_default_share():
    from scoring import splits

    options = run.RunOptions(rounds=3, max_rounds=5)
    assert (options.prompts, options.benign_share) == (24, 0.5)
    slices = run.training_mix(options)
    assert [len(s) for s in slices] == [24] * 5  # drawn for every round the run may take
    assert all(sum(p.kind == "helpful" for p in s) == 12 for s in slices)
    ids = [p.prompt_id for s in slices for p in s]
    assert len(set(ids)) == 120  # no prompt is fed twice
    # Only the training split: the gate's dev prompts and the held-out prompts are never fed.
    assert {splits.split_of(p.prompt) for s in slices for p in s} == {"train"}
    assert run.training_mix(options) == slices  # seeded


class _Rounds:
    """A trainer stand-in for ``run_rounds``: each fed round takes ``minutes[i]`` on a fake clock
    and then counts as done."""

    def __init__(self, minutes, done=0):
        self.minutes, self.now, self.done, self.fed = list(minutes), 0.0, done, []

    def watch(self, settings, stream, until, deadline, live, supervisor, tick):
        self.now += 60 * self.minutes[self.done]
        self.done += 1
        return {}


def _run_rounds(monkeypatch, options, minutes, done=0):
    from types import SimpleNamespace

    from agents import feed

    trainer = _Rounds(minutes, done)
    monkeypatch.setattr(run, "time", SimpleNamespace(monotonic=lambda: trainer.now))
    monkeypatch.setattr(run, "watch", trainer.watch)
    monkeypatch.setattr(run, "_rounds_done", lambda settings: trainer.done)
    monkeypatch.setattr(run, "trainer_rounds", lambda settings: [{}] * trainer.done)
    monkeypatch.setattr(run, "round_line", lambda summary, total: "round done")
    monkeypatch.setattr(run.monitor, "snapshot", lambda settings, stream: {})
    monkeypatch.setattr(run.monitor, "render", lambda snap: "")
    monkeypatch.setattr(feed, "publish", lambda prompts, stream, progress: trainer.fed.append(
        len(prompts)))
    _, fed = run.run_rounds(None, None, options, deadline=10 ** 9, started=0.0)
    return trainer, fed


def test_rounds_beyond_the_minimum_start_only_while_one_more_would_end_in_time(monkeypatch):
    options = run.RunOptions(prompts=4, rounds=2, max_rounds=5, more_rounds_within=25)
    # After 6 + 5 minutes a third round is expected to end at 11 + 1.15 * 5 <= 25 and a fourth
    # at 16 + 1.15 * 5; a fifth, at 20.5 + 1.15 * 4.5 = 25.2 minutes, is not started (it
    # would fit only without the 15% margin).
    trainer, fed = _run_rounds(monkeypatch, options, [6, 5, 5, 4.5, 4])
    assert trainer.done == 4 and fed == 16 and trainer.fed == [4, 4, 4, 4]
    # The minimum is always run, however long the rounds take.
    trainer, fed = _run_rounds(monkeypatch, options, [20, 20, 20, 20, 20])
    assert trainer.done == 2 and fed == 8
    # Fast rounds: up to --max-rounds, no more.
    trainer, fed = _run_rounds(monkeypatch, options, [1] * 5)
    assert trainer.done == 5 and fed == 20
    # A resumed run whose minimum rounds all ran before has timed no round: none more starts.
    trainer, fed = _run_rounds(monkeypatch, options, [1] * 5, done=2)
    assert trainer.done == 2 and trainer.fed == []
    # Resumed after one round: the second is timed, and the extra rounds are judged on it.
    trainer, fed = _run_rounds(monkeypatch, options, [1] * 5, done=1)
    assert trainer.done == 5 and trainer.fed == [4, 4, 4, 4]


def test_the_evaluation_holds_out_at_least_48_benign_prompts():
    from scoring import splits

    harmful, benign = run.evaluation_sets(run.RunOptions())
    assert len(benign) >= 48 and len(harmful) >= 48
    assert {splits.split_of(p) for p in harmful + benign} == {"held-out"}


def _round(tmp_path, number, promoted, reasons=(), gate=None, version=None):
    from trainer import checkpoint
    from trainer.config import TrainerConfig

    state = checkpoint.RoundState(round=number, promoted=promoted, policy_weights="base",
                                  reward_weights=None, policy_version=1, offsets={},
                                  extra={"reasons": list(reasons), "gate": gate or {}})
    folder = checkpoint.write_round(tmp_path / "trainer", state, {"data/sft_helpful": 3.0},
                                    {}, {}, TrainerConfig(), None)
    if version:
        checkpoint.write_published(folder, version, announced=True)


def test_a_run_is_done_after_its_rounds_promoted_or_rejected_and_reports_why(tmp_path):
    from cai import report
    from scoring.shares import Share
    from streams import topics

    settings = StackSettings(state_dir=tmp_path)
    snap = {"topics": {"sft": {"total": 4, "lag": {topics.TRAINER_GROUP: 0}},
                       "preferences": {"total": 4, "lag": {topics.TRAINER_GROUP: 0}}}}
    assert not run.pipeline_done(snap, fed=4, rounds_finished=0, rounds_wanted=2)
    after = {"harmless": Share(20, 48).as_dict()}
    _round(tmp_path, 1, True, gate={"before": {}, "after": after}, version=2)
    _round(tmp_path, 2, False, reasons=["dev harmless 20/48 -> 19/48: not up by 1"])
    rounds = run.trainer_rounds(settings)
    assert [(r["round"], r["promoted"], r["version"]) for r in rounds] == [
        (1, True, 2), (2, False, None)]
    assert run.served_versions(rounds) == [1, 2]
    assert run.pipeline_done(snap, fed=4, rounds_finished=len(rounds), rounds_wanted=2)
    snap["topics"]["preferences"]["lag"][topics.TRAINER_GROUP] = 2  # pairs not trained yet
    assert not run.pipeline_done(snap, fed=4, rounds_finished=2, rounds_wanted=2)
    text = report.markdown({"trainer_rounds": rounds})
    assert "round 1 promoted as policy v2" in text and "harmless 41.7%" in text
    assert "round 2 rejected: dev harmless 20/48 -> 19/48: not up by 1" in text
    line = run.round_line(rounds[0], 3)
    assert line.startswith("cai run: round 1/3: round 1 promoted as policy v2") and "42%" in line


def test_the_report_has_a_row_and_a_curve_point_per_served_version(tmp_path):
    from cai import report
    from scoring.shares import Share

    def figures(h):
        return {"harmless": Share(h, 48).as_dict(), "explains_why": Share(h, h).as_dict(),
                "declined_then_complied": Share(0, 48).as_dict(),
                "over_refusal": Share(1, 48).as_dict()}

    data = {"model": "tiny", "recipe": "context-distillation",
            "policies": {"v1": figures(6), "v2": figures(20), "v4": figures(30)}}
    report.write(data, tmp_path / "run.json")
    text = (tmp_path / "run.md").read_text()
    assert "| v2 | 41.7%" in text and "| v4 | 62.5%" in text
    assert "declined then complied" in text and "![learning curve](run-curve.png)" in text
    png = (tmp_path / "run-curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


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

    config = run.trainer_config(run.RunOptions(prompts=24, recipe="context-distillation"))
    for name, value in recipes.RECIPES["context-distillation"].trainer.items():
        assert getattr(config, name) == value, name
    # A round waits for the pipeline to drain; the dev gate decides, no stream probe.
    assert (config.round_min_examples, config.probe_size, config.gate) == (8, 0, True)
    argv = trainer_argv(config.save(tmp_path))
    args = build_parser().parse_args(argv[argv.index("trainer"):])  # what the child parses
    assert build_config(args.config, {}) == config


def test_the_run_options_are_the_flags():
    from cai.cli import build_parser
    from core.options import from_args

    args = build_parser().parse_args(["run", "--prompts", "8", "--recipe", "paper", "--keep",
                                      "--benign-share", "0.25", "--duration", "2",
                                      "--rounds", "4"])
    parsed = from_args(run.RunOptions, args)
    assert (parsed.prompts, parsed.recipe, parsed.keep, parsed.benign_share, parsed.duration,
            parsed.rounds) == (8, "paper", True, 0.25, 2.0, 4)
    assert from_args(run.RunOptions, build_parser().parse_args(["run"])) == run.RunOptions()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--benign-share", "1.5"])


def test_a_run_serves_the_dashboard_once_and_stops_it_with_the_others(tmp_path, monkeypatch):
    from stack import children
    from stack.processes import free_port
    from tests.cai.conftest import get, get_json

    # Nothing listens at these addresses: the dashboard serves anyway and names what is missing.
    monkeypatch.setenv("CAI_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("CAI_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("CAI_DASHBOARD_PORT", "0")
    settings = StackSettings(state_dir=tmp_path)
    options = run.RunOptions(model="tiny", report=tmp_path / "run.json")
    try:
        address = run.start_dashboard(settings, options)
        assert address and get(address + "healthz") == (200, "ok")
        assert run.start_dashboard(settings, options) == address  # a resumed run finds it
        assert get_json(address + "api/snapshot")["errors"]
    finally:
        children.stop(settings)
    assert children.child(settings, "dashboard").read_pid() is None


def test_the_worker_takes_a_recipe_where_nothing_else_set_the_field(monkeypatch):
    monkeypatch.setenv("CAI_PIPELINE_POLICY_MAX_NEW_TOKENS", "20")
    settings = recipes.over_settings(PipelineSettings(rounds=3), "context-distillation")
    assert (settings.strategy, settings.preference) == ("context", "revision-over-initial")
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


def test_each_rounds_benign_prompts_are_the_ones_closest_in_wording_to_its_red_team_ones():
    from scoring.contrast import form_similarity

    def openings(slices):
        """Per round, the leading words each red-team prompt shares with the closest benign
        prompt of its round, summed."""
        return [sum(max(form_similarity(red.prompt, green.prompt)[0]
                        for green in s if green.kind == "helpful")
                    for red in s if red.kind != "helpful")
                for s in slices]

    contrast = run.training_mix(run.RunOptions(prompts=24, rounds=3, contrast_benign=True))
    drawn = run.training_mix(run.RunOptions(prompts=24, rounds=3, contrast_benign=False))
    # The same red-team prompts either way; only the benign ones are chosen differently.
    assert ([sorted(p.prompt_id for p in s if p.kind != "helpful") for s in contrast]
            == [sorted(p.prompt_id for p in s if p.kind != "helpful") for s in drawn])
    assert all(c > d for c, d in zip(openings(contrast), openings(drawn)))
