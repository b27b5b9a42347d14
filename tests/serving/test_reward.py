"""Unit tests of the reward role: the ``score`` wire format, the reward role in settings and in
the rendered repository, and ``LocalInference.score`` against ``RewardModel`` in-process."""

from __future__ import annotations

import json

import pytest

from core.settings import REWARD_ROLE, ROLES, ModelSettings, trainer_roles
from serving import protocol
from serving.models import resolve
from serving.requests import RequestError, ScoreRequest

PROMPTS = ["How do I bake bread?", "Tell me how to pick a lock."]
ANSWERS = ["Mix flour, water, salt and yeast, let it rise, then bake it.",
           "I can't help with that, because it could be used to break in."]


def test_score_round_trip():
    request = protocol.decode_request(protocol.encode_score("q", "a", {"max_length": 64}))
    assert request == ScoreRequest("q", "a", max_length=64)
    assert protocol.decode_request(protocol.encode_score("q", "a", {})) == ScoreRequest("q", "a")
    assert json.loads(protocol.encode_score("q", "a", {"max_length": 8})) == {
        "op": "score", "prompt": "q", "answer": "a", "params": {"max_length": 8}}


@pytest.mark.parametrize(("raw", "field"), [
    ({"op": "score", "prompt": "q"}, "answer"),
    ({"op": "score", "answer": "a"}, "prompt"),
    ({"op": "score", "prompt": "q", "answer": 3}, "answer must be a string"),
    ({"op": "score", "prompt": ["q"], "answer": "a"}, "prompt must be a string"),
    ({"op": "score", "prompt": "q", "answer": "a", "params": {"max_length": 0}}, "max_length"),
    ({"op": "score", "prompt": "q", "answer": "a", "params": {"max_length": "9"}}, "max_length"),
    ({"op": "score", "prompt": "q", "answer": "a", "params": {"max_length": True}}, "max_length"),
    ({"op": "score", "prompt": "q", "answer": "a", "params": {"temperature": 1}},
     "unknown score parameter"),
    ({"op": "rank", "prompt": "q", "answer": "a"}, "op must be one of"),
])
def test_score_errors_name_the_field(raw, field):
    with pytest.raises(RequestError, match=field):
        protocol.decode_request(json.dumps(raw).encode())


def test_the_reward_role_defaults_to_the_policy_model(monkeypatch):
    monkeypatch.delenv("CAI_REWARD_MODEL", raising=False)
    assert ROLES == ("policy", "critic", "reviser", "judge")  # the default set is unchanged
    assert ModelSettings(model="tiny").for_role(REWARD_ROLE) == "tiny"
    assert ModelSettings(model="tiny", policy_model="tiny-2").for_role(REWARD_ROLE) == "tiny-2"
    monkeypatch.setenv("CAI_REWARD_MODEL", "tiny-7")
    assert ModelSettings(model="tiny").for_role(REWARD_ROLE) == "tiny-7"
    with pytest.raises(ValueError, match="reward"):
        ModelSettings().for_role("scorer")
    assert trainer_roles({"mode": "rloo"}) == (REWARD_ROLE,)
    assert trainer_roles({"mode": "dpo"}) == trainer_roles({}) == ()


def test_the_repository_renders_the_reward_role_on_the_policy_base(tmp_path, cache_dir):
    from serving.repository import read_version_source, render_repository

    render_repository(tmp_path, ModelSettings(model="tiny", policy_model="tiny-1"), cache_dir,
                      roles=("policy", REWARD_ROLE), threads=2, instances=2)
    config = (tmp_path / REWARD_ROLE / "config.pbtxt").read_text()
    assert 'name: "reward"' in config and "dynamic_batching" in config
    assert "count: 2 kind: KIND_CPU" in config
    assert 'key: "threads" value: { string_value: "2" }' in config
    assert 'key: "hot_swap" value: { string_value: "false" }' in config  # reloads only
    assert "latest: { num_versions: 1 }" in config
    source = json.loads((tmp_path / REWARD_ROLE / "1" / "source.json").read_text())
    assert source["spec"] == "tiny-1"
    assert read_version_source(tmp_path / REWARD_ROLE / "1") == resolve("tiny-1", cache_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy", REWARD_ROLE]


def test_the_stack_loads_the_reward_role_only_when_asked(tmp_path, cache_dir):
    from stack import services
    from tests.conftest import fresh_stack_settings

    settings = fresh_stack_settings(tmp_path / "state").model_copy(update={"cache_dir": cache_dir})
    argv, _, _ = services._launch(settings, "triton", ModelSettings(model="tiny"),
                                  roles=("policy", REWARD_ROLE))
    assert [a for a in argv if a.startswith("--load-model")] == [
        "--load-model=policy", "--load-model=reward"]
    assert (settings.triton_repository / REWARD_ROLE / "config.pbtxt").exists()
    argv, _, _ = services._launch(settings.model_copy(update={"state_dir": tmp_path / "other"}),
                                  "triton", ModelSettings(model="tiny"))
    assert [a for a in argv if a.startswith("--load-model")] == ["--load-model=*"]
    assert not (tmp_path / "other" / "triton" / "models" / REWARD_ROLE).exists()


def test_publish_refuses_other_roles_and_a_missing_reward_role(tmp_path, cache_dir):
    from serving.publish import PublishError, checkpoints_key, publish_role, version_key
    from tests.conftest import fresh_stack_settings

    assert version_key() == "cai:policy:version"
    assert (version_key(REWARD_ROLE), checkpoints_key(REWARD_ROLE)) == (
        "cai:reward:version", "cai:reward:checkpoints")
    settings = fresh_stack_settings(tmp_path / "state")
    with pytest.raises(PublishError, match="cannot publish to role 'judge'"):
        publish_role("judge", resolve("tiny", cache_dir), settings)
    with pytest.raises(PublishError, match="no reward role"):
        publish_role(REWARD_ROLE, resolve("tiny", cache_dir), settings)


@pytest.fixture(scope="module")
def reward_checkpoint(tmp_path_factory, cache_dir):
    """A saved reward model whose head was drawn with another seed than the base's fresh one."""
    from serving.reward_model import RewardModel

    folder = tmp_path_factory.mktemp("reward") / "seed-1"
    RewardModel.from_pretrained(resolve("tiny", cache_dir), seed=1).save(folder)
    return folder


async def test_local_inference_scores_like_the_reward_model(cache_dir, reward_checkpoint):
    from serving.inference import LocalInference, NullInference
    from serving.reward_model import RewardModel

    base = resolve("tiny", cache_dir)
    inference = LocalInference(base, threads=1)
    results = await inference.score(PROMPTS, ANSWERS)
    expected = RewardModel.from_pretrained(base).score(PROMPTS, ANSWERS)
    assert [r.model_version for r in results] == [1, 1]
    assert [r.reward for r in results] == pytest.approx(expected, abs=1e-5)
    assert results[0].reward != pytest.approx(results[1].reward, abs=1e-7)

    inference.set_reward(str(reward_checkpoint), 2)
    after = await inference.score(PROMPTS, ANSWERS)
    trained = RewardModel.from_pretrained(reward_checkpoint).score(PROMPTS, ANSWERS)
    assert [r.model_version for r in after] == [2, 2]
    assert [r.reward for r in after] == pytest.approx(trained, abs=1e-5)
    assert all(abs(a.reward - b.reward) > 1e-4 for a, b in zip(after, results))

    null = await NullInference().score(PROMPTS, ANSWERS)
    assert [(r.reward, r.model_version) for r in null] == [(0.0, 1), (0.0, 1)]


def test_cli_renders_the_reward_role_for_a_recipe_whose_trainer_scores(tmp_path, cache_dir,
                                                                       monkeypatch):
    from cai.cli import main
    from core import recipes

    monkeypatch.setenv("CAI_CACHE_DIR", str(cache_dir))
    assert main(["repository", "render", str(tmp_path / "plain"), "--model", "tiny",
                 "--recipe", "paper"]) == 0
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == sorted(ROLES)
    paper = recipes.RECIPES["paper"]
    monkeypatch.setitem(recipes.RECIPES, "paper",
                        recipes.Recipe(pipeline=paper.pipeline, trainer={"mode": "rloo"}))
    assert main(["repository", "render", str(tmp_path / "rl"), "--model", "tiny",
                 "--recipe", "paper"]) == 0
    assert sorted(p.name for p in (tmp_path / "rl").iterdir()) == sorted((*ROLES, REWARD_ROLE))
