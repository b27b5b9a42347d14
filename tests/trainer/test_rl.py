"""Online RL (mode 'rloo'): the loss against its closed form, the step on a tiny model, the
preference model's held-out split, and the gate's guards against a gamed reward model."""

from __future__ import annotations

import math

import pytest
import torch

from trainer import gate
from trainer.config import TrainerConfig
from trainer.data import IGNORE_INDEX, PreferenceExample, RLSample, rl_batch
from trainer.losses import rloo_advantages, rloo_loss
from trainer.rl import informative, is_held_out, round_prompts, sample_metrics, split_pairs
from trainer.steps import PolicyLearner


def test_leave_one_out_advantages_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 6.0], [0.5, 0.5, 0.5]])
    # Row 0: baselines are the mean of the other two: (2+6)/2, (1+6)/2, (1+2)/2.
    expected = torch.tensor([[1 - 4.0, 2 - 3.5, 6 - 1.5], [0.0, 0.0, 0.0]])
    assert torch.allclose(rloo_advantages(rewards), expected)
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(torch.tensor([[1.0], [2.0]]))


def test_rloo_loss_matches_its_closed_form_on_a_hand_made_batch():
    # Two answers: answer 0 has tokens t0, t1; answer 1 has token t2.
    rows = torch.tensor([0, 0, 1])
    logps = torch.tensor([-1.0, -2.0, -0.5])
    old = torch.tensor([-1.2, -1.0, -0.5])
    ref = torch.tensor([-1.1, -2.5, -0.7])
    adv = torch.tensor([2.0, -1.0])
    clip, beta = 0.2, 0.1

    def token(lp, o, r, a):
        ratio = math.exp(lp - o)
        pg = max(-a * ratio, -a * min(max(ratio, 1 - clip), 1 + clip))
        d = r - lp
        return pg + beta * (math.exp(d) - d - 1)

    answer0 = (token(-1.0, -1.2, -1.1, 2.0) + token(-2.0, -1.0, -2.5, 2.0)) / 2
    answer1 = token(-0.5, -0.5, -0.7, -1.0)
    loss, metrics = rloo_loss(logps, old, ref, rows, adv, clip, beta)
    assert loss.item() == pytest.approx((answer0 + answer1) / 2, rel=1e-6)
    # ratios exp(0.2)=1.22 (clipped), exp(-1)=0.37 (clipped), exp(0)=1: two of three tokens.
    assert metrics["rl/clip_fraction"] == pytest.approx(2 / 3)
    assert metrics["rl/kl"] > 0


def test_rloo_loss_at_the_sampling_policy_is_minus_the_mean_advantage_and_no_kl():
    rows = torch.tensor([0, 1, 1])
    same = torch.tensor([-1.0, -0.3, -0.9])
    adv = torch.tensor([1.5, -0.5])
    loss, metrics = rloo_loss(same, same, same, rows, adv, 0.2, 0.5)
    assert loss.item() == pytest.approx(-(1.5 - 0.5) / 2)
    assert metrics["rl/kl"] == pytest.approx(0.0)


def test_a_truncated_answer_is_not_taught_to_end_there(tokenizer):
    full = RLSample("a", "Hi", "Hello there", 0.0)
    cut = RLSample("a", "Hi", "Hello there", 0.0, truncated=True)
    batch = rl_batch(tokenizer, [full, cut], 128)
    labelled = (batch["labels"] != IGNORE_INDEX).sum(dim=1).tolist()
    # The chat template ends a turn with "<|im_end|>" and a newline: two labels fewer.
    assert labelled[0] == labelled[1] + 2
    ends = batch["labels"][1][batch["labels"][1] != IGNORE_INDEX].tolist()
    assert tokenizer.decode(ends) == "Hello there"


def test_rl_steps_raise_the_answer_with_the_higher_advantage(tiny_path):
    cfg = TrainerConfig(lora=True, lr=2e-2, rl_beta=0.0, rl_clip=10.0)
    learner = PolicyLearner(tiny_path, cfg)
    # Truncated: no shared end-of-turn tokens, so each answer's tokens are its own.
    good = RLSample("p", "Can you help?", "Yes, gladly.", 1.0, advantage=1.0, truncated=True)
    bad = RLSample("p", "Can you help?", "No way", -1.0, advantage=-1.0, sample=1,
                   truncated=True)
    learner.begin_round(seed=0)
    learner.precompute_rl_reference([good, bad])

    def mean_logp(sample):
        batch = learner.rl_batch([sample])
        from trainer.losses import token_logps

        with torch.no_grad():
            lp, _ = token_logps(learner.model, batch["input_ids"], batch["attention_mask"],
                                batch["labels"])
        return lp.mean().item()

    start = (mean_logp(good), mean_logp(bad))
    first = learner.rl_step([good, bad])
    for _ in range(5):
        learner.rl_step([good, bad])
    end = (mean_logp(good), mean_logp(bad))
    learner.end_round(keep=True)
    assert first["rl/ratio"] == pytest.approx(1.0, abs=1e-4)  # first step: policy == sampler
    assert end[0] > start[0] and end[1] < start[1], (start, end)


def test_the_held_out_pairs_are_stable_and_about_the_share():
    ids = [f"prompt-{i}" for i in range(2000)]
    held = [i for i in ids if is_held_out(i, 0.2)]
    assert 0.16 < len(held) / len(ids) < 0.24
    assert held == [i for i in ids if is_held_out(i, 0.2)]
    assert not any(is_held_out(i, 0.0) for i in ids)
    pairs = [PreferenceExample(i, "q", "a", "b") for i in ids[:50]]
    train, kept_back = split_pairs(pairs, 0.2)
    assert len(train) + len(kept_back) == 50
    assert not {p.prompt_id for p in train} & {p.prompt_id for p in kept_back}


def test_round_prompts_and_informative_samples():
    examples = [PreferenceExample("a", "qa", "x", "y"), PreferenceExample("b", "qb", "x", "y",
                                                                          kind="helpful"),
                PreferenceExample("a", "qa", "z", "w")]
    assert [(p.prompt_id, p.kind) for p in round_prompts(examples)] == [("a", "harmful"),
                                                                       ("b", "helpful")]
    flat = [RLSample("a", "qa", "1", 1.0, 0.5), RLSample("a", "qa", "2", 0.0, -0.5, sample=1),
            RLSample("b", "qb", "3", 0.2, 0.0, kind="helpful"),
            RLSample("b", "qb", "4", 0.2, 0.0, kind="helpful", sample=1)]
    assert [s.answer for s in informative(flat)] == ["1", "2"]
    metrics = sample_metrics(flat)
    assert metrics["rl/samples"] == 4 and metrics["rl/reward_harmful"] == pytest.approx(0.5)


def _figures(harmless_hits: int, boiler: int, words: float) -> dict:
    share = {"value": 0.0, "hits": 0, "n": 10, "ci95": None}
    return {"harmless": {**share, "hits": harmless_hits}, "explains_why": {**share, "value": None},
            "declined_then_complied": share, "over_refusal": share,
            "boilerplate": {**share, "hits": boiler, "value": boiler / 10},
            "answer_words": {"value": words, "n": 10}}


def test_the_gate_rejects_a_round_that_turns_to_boilerplate_or_changes_length():
    cfg = TrainerConfig(gate_boilerplate_tolerance=0.2, gate_length_tolerance=0.5)
    before = base = _figures(2, 1, 40.0)
    assert gate.decide(before, _figures(4, 3, 30.0), base, cfg) == []
    boiler = gate.decide(before, _figures(4, 6, 30.0), base, cfg)
    assert len(boiler) == 1 and "boilerplate rose 0.100 -> 0.600" in boiler[0]
    short = gate.decide(before, _figures(4, 1, 12.0), base, cfg)
    assert len(short) == 1 and "-70%" in short[0]
    # Off by default, and figures from before the guards existed are not compared.
    assert gate.decide(before, _figures(4, 9, 5.0), base, TrainerConfig()) == []
    old = {k: v for k, v in before.items() if k not in ("boilerplate", "answer_words")}
    assert gate.decide(old, _figures(4, 9, 5.0), old, cfg) == []


def test_boilerplate_counts_answers_repeated_for_another_prompt():
    answers = ["I can't help.", "i can't   help.", "Paris is the capital.", "Sure: step 1"]
    assert gate.boilerplate(answers).hits == 2
    assert gate.answer_words(answers)["value"] == pytest.approx((3 + 3 + 4 + 3) / 4)
