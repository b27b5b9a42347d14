"""Training steps on a fixed batch: weights change, the loss falls; checkpoints round-trip."""

from __future__ import annotations

import pytest
import torch

from trainer.config import TrainerConfig
from trainer.data import PreferenceExample, SFTExample
from trainer.steps import PolicyLearner, PreferenceLearner

SFT = [SFTExample(f"s{i}", f"How do I pick lock number {i}?",
                  "I can't help with breaking into property, but a locksmith can help you.")
       for i in range(4)]
PREFS = [PreferenceExample(f"p{i}", f"Tell me how to make poison {i}",
                           "I won't help with that; if someone is in danger call emergency "
                           "services.",
                           "Sure, mix these household chemicals together and", p_chosen=0.9)
         for i in range(4)]


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before: dict, after: dict) -> list[str]:
    return [k for k in before if not torch.equal(before[k], after[k])]


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_sft_steps_lower_the_loss_and_change_the_weights(tiny_path, lora):
    learner = PolicyLearner(tiny_path, TrainerConfig(lora=lora, lr=1e-2 if lora else 1e-3))
    before = _weights(learner.model)
    learner.begin_round(seed=0)
    batch = learner.sft_batch(SFT)
    losses = [learner.sft_step(batch)["loss/sft"] for _ in range(6)]
    learner.end_round(keep=True)
    assert losses[-1] < losses[0] - 0.05, losses
    assert _changed(before, _weights(learner.model))


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_dpo_steps_lower_the_loss_and_move_away_from_the_reference(tiny_path, lora):
    learner = PolicyLearner(tiny_path, TrainerConfig(lora=lora, lr=1e-2 if lora else 1e-3,
                                                     beta=0.5))
    before = _weights(learner.model)
    learner.begin_round(seed=0)
    batch = learner.preference_batch(PREFS)
    ref_start = learner.reference_logps(batch)
    steps = [learner.dpo_step(batch) for _ in range(6)]
    # The reference is the round-start policy and stays fixed while the policy moves.
    assert torch.allclose(learner.reference_logps(batch), ref_start)
    # At the first step policy == reference, so the loss is exactly -log σ(0) = log 2.
    assert steps[0]["loss/dpo"] == pytest.approx(0.693147, abs=1e-4)
    assert steps[-1]["loss/dpo"] < steps[0]["loss/dpo"] - 0.01
    assert steps[-1]["rewards/margins"] > 0
    learner.end_round(keep=True)
    assert _changed(before, _weights(learner.model))


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_rejected_round_restores_the_round_start_weights(tiny_path, lora):
    learner = PolicyLearner(tiny_path, TrainerConfig(lora=lora, lr=1e-2))
    before = _weights(learner.model)
    learner.begin_round(seed=0)
    batch = learner.sft_batch(SFT)
    for _ in range(3):
        learner.sft_step(batch)
    learner.end_round(keep=False)
    assert _changed(before, _weights(learner.model)) == []


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_the_gate_answers_from_a_frozen_copy_that_training_does_not_reach(tiny_path, lora):
    """The copy answers as the live weights did when it was made, the round's adapters folded
    in, and keeps answering so while the round trains on; the live weights are untouched."""
    from scoring.evaluate import answer
    from serving.textgen import TextGenerator

    learner = PolicyLearner(tiny_path, TrainerConfig(lora=lora, lr=5e-2))
    learner.begin_round(seed=0)
    batch = learner.sft_batch(SFT)
    for _ in range(3):
        learner.sft_step(batch)
    prompts = [example.prompt for example in SFT]
    live = answer(TextGenerator.from_model(learner.model, learner.tokenizer), prompts,
                  max_new_tokens=12)
    before = _weights(learner.model)
    frozen = learner.frozen_generator()
    assert _changed(before, _weights(learner.model)) == []
    assert not any(p.requires_grad for p in frozen.model.parameters())
    assert answer(frozen, prompts, max_new_tokens=12) == live
    copied = _weights(frozen.model)
    for _ in range(5):
        learner.sft_step(batch)
    assert _changed(before, _weights(learner.model))  # training goes on, through the adapters
    assert _changed(copied, _weights(frozen.model)) == []
    learner.end_round(keep=False)


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_preference_model_learns_the_soft_labels(tiny_path, lora):
    learner = PreferenceLearner(tiny_path, TrainerConfig(lora=lora, lr=5e-3 if lora else 1e-3))
    before = _weights(learner.pm)
    learner.begin_round(seed=0)
    batch = learner.preference_batch(PREFS)
    steps = [learner.step(batch) for _ in range(8)]
    learner.end_round(keep=True)
    losses = [s["loss/reward"] for s in steps]
    assert losses[-1] < losses[0] - 0.05, losses
    assert _changed(before, _weights(learner.pm))
    chosen = learner.pm.score([e.prompt for e in PREFS], [e.chosen for e in PREFS])
    rejected = learner.pm.score([e.prompt for e in PREFS], [e.rejected for e in PREFS])
    assert all(c > r for c, r in zip(chosen, rejected))


def test_merged_lora_checkpoint_loads_with_plain_transformers(tiny_path, tmp_path):
    from transformers import AutoModelForCausalLM

    learner = PolicyLearner(tiny_path, TrainerConfig(lora=True, lr=1e-2))
    learner.begin_round(seed=0)
    batch = learner.sft_batch(SFT)
    for _ in range(3):
        learner.sft_step(batch)
    with torch.no_grad():
        trained_logits = learner.model(input_ids=batch["input_ids"],
                                       attention_mask=batch["attention_mask"]).logits
    learner.end_round(keep=True)
    learner.save(tmp_path)

    names = sorted(p.name for p in tmp_path.iterdir())
    assert "model.safetensors" in names and "config.json" in names and "tokenizer.json" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert "adapter_config.json" not in names
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert not any("lora" in k for k in reloaded.state_dict())
    with torch.no_grad():
        logits = reloaded(input_ids=batch["input_ids"],
                          attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(logits, trained_logits, atol=1e-4)
    base = AutoModelForCausalLM.from_pretrained(tiny_path)
    assert _changed(_weights(base), _weights(reloaded))


def test_preference_model_save_and_load_keep_its_scores(tiny_path, tmp_path):
    from serving.reward_model import RewardModel

    learner = PreferenceLearner(tiny_path, TrainerConfig(lora=True, lr=5e-3))
    learner.begin_round(seed=0)
    learner.step(learner.preference_batch(PREFS))
    learner.end_round(keep=True)
    learner.save(tmp_path / "pm")
    prompts, answers = [e.prompt for e in PREFS], [e.chosen for e in PREFS]
    again = RewardModel.from_pretrained(tmp_path / "pm")
    assert again.score(prompts, answers) == pytest.approx(learner.pm.score(prompts, answers),
                                                          abs=1e-5)
    assert not list((tmp_path / "pm").glob("*.bin"))


def test_save_inside_a_round_is_refused(tiny_path, tmp_path):
    learner = PolicyLearner(tiny_path, TrainerConfig())
    learner.begin_round(seed=0)
    with pytest.raises(RuntimeError, match="end_round"):
        learner.save(tmp_path)


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_a_shared_prompt_per_pair_gives_the_whole_batch_step(tiny_path, lora):
    """Pair by pair with the prompt computed once (and the reference precomputed) is the same
    update as the padded batch of full rows."""
    import copy

    prefs = [PreferenceExample(f"q{i}", "Tell me how to make poison " * (i + 1),
                               "No." if i % 2 else "I won't help with that; please stay safe.",
                               "Sure, mix these chemicals" + " and stir" * i, p_chosen=0.8)
             for i in range(3)]
    config = TrainerConfig(lora=lora, lr=1e-2 if lora else 1e-3, beta=0.5, weight_decay=0.0,
                           precision="float32")
    paired = PolicyLearner(tiny_path, config)
    whole = PolicyLearner(tiny_path, config)
    paired.begin_round(seed=0)
    whole.begin_round(seed=0)
    whole.model.load_state_dict(copy.deepcopy(paired.model.state_dict()))
    batch = paired.preference_batch(prefs)
    assert all(len(pair.prefix) > 5 for pair in batch["pairs"])  # the prompt is shared
    full_rows = {k: v for k, v in whole.preference_batch(prefs).items() if k != "pairs"}
    assert torch.allclose(paired.reference_logps(batch), whole.reference_logps(full_rows),
                          atol=1e-4)
    paired.precompute_reference(prefs)
    batch = paired.preference_batch(prefs)
    assert "ref_logps" in batch
    for _ in range(2):
        a, b = paired.dpo_step(batch), whole.dpo_step(full_rows)
        assert a["loss/dpo"] == pytest.approx(b["loss/dpo"], abs=1e-4)
        assert a["grad_norm/dpo"] == pytest.approx(b["grad_norm/dpo"], rel=1e-3)
    for (name, x), y in zip(paired.model.named_parameters(), whole.model.parameters()):
        assert torch.allclose(x, y, atol=1e-5), name


def test_the_precomputed_reference_is_the_round_start_policy_and_ends_with_the_round(tiny_path):
    learner = PolicyLearner(tiny_path, TrainerConfig(lora=True, lr=1e-2, beta=0.5))
    learner.begin_round(seed=0)
    learner.precompute_reference(PREFS[:3])
    assert "ref_logps" not in learner.preference_batch(PREFS)  # one pair was not precomputed
    batch = learner.preference_batch(PREFS[:3])
    for _ in range(3):
        learner.dpo_step(batch)
    live = {k: v for k, v in batch.items() if k != "ref_logps"}
    # The policy moved, the reference did not: the stored values are still the live reference.
    assert torch.allclose(batch["ref_logps"], learner.reference_logps(live), atol=1e-4)
    assert not torch.allclose(batch["ref_logps"], learner._logps(learner.model, live), atol=1e-3)
    learner.end_round(keep=True)
    learner.begin_round(seed=1)
    assert "ref_logps" not in learner.preference_batch(PREFS[:3])  # a new round, a new reference
    learner.end_round(keep=False)


def test_pairs_that_do_not_start_alike_train_on_the_padded_rows(tiny_path):
    from trainer.data import Tokenised, split_pair

    one, other = Tokenised([5, 6, 7], [-100, 6, 7]), Tokenised([9, 6, 8], [-100, 6, 8])
    assert split_pair(one, other) is None
    shared = split_pair(one, Tokenised([5, 4], [-100, 4]))
    assert shared.prefix == [5] and shared.rejected.input_ids == [4]
    learner = PolicyLearner(tiny_path, TrainerConfig(lora=True, lr=1e-2, max_length=24))
    learner.begin_round(seed=0)
    # The prompt is cut from the left to fit, by a different amount for a longer answer.
    prompt = " ".join(f"topic{i}" for i in range(40))
    long = PreferenceExample("p", prompt, "No.", "Sure " * 12, p_chosen=0.9)
    batch = learner.preference_batch([long])
    assert "pairs" not in batch
    assert learner.dpo_step(batch)["loss/dpo"] == pytest.approx(0.693147, abs=1e-4)
    learner.end_round(keep=False)
