"""One RL round end to end on a tiny model, with the roles served in-process as `cai grid` serves
them: the preference model learns and is published as reward v2, the serving policy's samples are
scored by it and sent on, the policy trains on them and is published as policy v2; a restarted
trainer resumes the reward model and its held-out pairs."""

from __future__ import annotations

import json
from pathlib import Path

from cai.grid.driver import PREFERENCES, SFT, LocalPublisher, MemorySource
from serving.inference import LocalInference
from streams.records import PreferenceRecord, SFTRecord, encode
from trainer import checkpoint as ckpt
from trainer.config import TrainerConfig
from trainer.loop import PM_HELDOUT_FILE, TrainerLoop
from trainer.rl import Rollouts, is_held_out


def _records(n: int) -> tuple[list[bytes], list[bytes]]:
    sft, prefs = [], []
    for i in range(n):
        kind = "helpful" if i % 2 else "harmful"
        prompt = f"How do I make thing {i}?"
        sft.append(encode(SFTRecord(prompt_id=f"q{i}", prompt=prompt, response=f"Answer {i}.",
                                    kind=kind, policy_version=1, record_id=f"sft-{i}")))
        prefs.append(encode(PreferenceRecord(
            prompt_id=f"q{i}", prompt=prompt, chosen="I can't help with that; it could hurt.",
            rejected=f"Sure, step one of {i}", p_chosen=0.9, kind=kind, policy_version=1,
            record_id=f"pref-{i}")))
    return sft, prefs


def _loop(tmp_path, tiny_path, inference, publisher, source) -> TrainerLoop:
    config = TrainerConfig(
        mode="rloo", gate=False, probe_size=0, lr=5e-3, epochs=2, rl_epochs=1, rl_samples=2,
        rl_max_new_tokens=8, max_length=96, batch_size=4, pm_holdout=0.3,
        promotion_threshold=1.0,  # the tiny PM's held-out accuracy is noise: keep it anyway
        nice=0, round_every_examples=1000)
    return TrainerLoop(config, tmp_path / "trainer", tiny_path, source, publisher, SFT,
                       PREFERENCES, rollouts=Rollouts(lambda: inference, close=False))


def _first_round(tmp_path, tiny_path, prompts: int, publisher_type=LocalPublisher):
    """A fresh trainer that reads ``prompts`` prompts' records and runs one round: (inference,
    publisher, loop, round folder)."""
    inference = LocalInference(tiny_path, threads=1)
    publisher, source = publisher_type(inference), MemorySource()
    sft, prefs = _records(prompts)
    source.push(SFT, sft)
    source.push(PREFERENCES, prefs)
    loop = _loop(tmp_path, tiny_path, inference, publisher, source)
    loop.resume()
    loop.gather()
    return inference, publisher, loop, loop.run_round()


def test_one_rl_round_publishes_a_reward_model_and_a_policy_version(tmp_path, tiny_path):
    inference, publisher, loop, folder = _first_round(tmp_path, tiny_path, 8)

    # The preference model is the reward role's version 2, loaded from the trainer's folder.
    assert publisher.reward_version == 2 and loop.reward_version == 2
    assert Path(loop.reward_weights).parent == tmp_path / "trainer" / "reward-models"
    # k=2 samples of each of the 8 prompts, sampled by policy v1, scored by reward v2.
    samples = publisher.samples
    assert len(samples) == 16
    assert {(s.policy_version, s.reward_version) for s in samples} == {(1, 2)}
    assert sorted({s.prompt_id for s in samples}) == [f"q{i}" for i in range(8)]
    for prompt_id in {s.prompt_id for s in samples}:
        pair = [s for s in samples if s.prompt_id == prompt_id]
        assert sorted(s.sample for s in pair) == [0, 1]
        # Leave-one-out with k=2: each advantage is the difference of the two rewards.
        assert abs(pair[0].advantage + pair[1].advantage) < 1e-5
        assert abs(pair[0].advantage - (pair[0].reward - pair[1].reward)) < 1e-4
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["rl/samples"] == 16 and "loss/rl" in metrics and "loss/dpo" not in metrics
    assert metrics["reward/version"] == 2 and "pm/loss" in metrics
    held = [i for i in range(8) if is_held_out(f"q{i}", 0.3)]
    assert metrics["pm/heldout_pairs"] == len(held)
    # The policy round went through and serves as v2.
    assert ckpt.load_state(folder).promoted and publisher.version == 2
    assert inference.sources["policy"] == publisher.served[2]
    summary = publisher.rounds[-1]
    assert summary["metrics"]["reward/version"] == 2 and "rl/reward_mean" in summary["metrics"]

    # A restarted trainer goes on with the same reward model and held-out pairs.
    again = _loop(tmp_path, tiny_path, inference, LocalPublisher(inference), MemorySource())
    again.resume()
    assert again.reward_version == 2 and again.reward_weights == loop.reward_weights
    if held:
        assert (folder / PM_HELDOUT_FILE).exists()
        assert sorted(e.prompt_id for e in again._pm_held_out) == [f"q{i}" for i in held]


def test_a_reward_model_published_after_the_last_round_folder_is_the_one_resumed(tmp_path,
                                                                                 tiny_path):
    """A crash between publishing the preference model and writing the round folder: the
    restarted trainer goes on with what serves (reward-models/serving.json), not the older
    round's pointer."""
    from trainer.loop import REWARD_MODELS_DIR, REWARD_SERVING_FILE

    inference, _, loop, _ = _first_round(tmp_path, tiny_path, 4)
    models = tmp_path / "trainer" / REWARD_MODELS_DIR
    assert json.loads((models / REWARD_SERVING_FILE).read_text()) == {
        "version": 2, "folder": "round-000001"}
    # As if round 2's preference model was published as v3, and the process then died.
    (models / "round-000002").mkdir()
    loop.runner.preference.save(models / "round-000002")
    (models / REWARD_SERVING_FILE).write_text(json.dumps({"version": 3,
                                                          "folder": "round-000002"}))
    again = _loop(tmp_path, tiny_path, inference, LocalPublisher(inference), MemorySource())
    again.resume()
    assert again.reward_version == 3
    assert Path(again.reward_weights) == models / "round-000002"


class _RefusingPublisher(LocalPublisher):
    def publish_reward(self, folder):
        raise RuntimeError("Triton could not load reward v2: corrupt weights")


def test_a_reward_model_triton_refuses_costs_the_round_its_rl_part_only(tmp_path, tiny_path):
    _, publisher, loop, folder = _first_round(tmp_path, tiny_path, 4, _RefusingPublisher)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert loop.reward_version == 1 and metrics["reward/version"] == 1
    assert publisher.samples == [] and "loss/rl" not in metrics and "loss/sft" in metrics
    assert ckpt.load_state(folder).promoted  # the SFT part went through
