"""Loss functions against closed forms, and the SFT mask against the chat template."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.data import IGNORE_INDEX, SFTExample, sft_batch, tokenise_turn
from trainer.losses import bradley_terry_loss, sequence_logps, sft_loss, soft_dpo_loss


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_soft_dpo_matches_closed_form_on_a_hand_made_case():
    # Δ = (-10 - -12) - (-11 - -10) = 2 - (-1) = 3 ; β = 0.5 -> βΔ = 1.5 ; p = 0.8
    pc, pr, rc, rr = [torch.tensor([v]) for v in (-10.0, -11.0, -12.0, -10.0)]
    loss, metrics = soft_dpo_loss(pc, pr, rc, rr, torch.tensor([0.8]), beta=0.5)
    expected = -(0.8 * _log_sigmoid(1.5) + 0.2 * _log_sigmoid(-1.5))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["rewards/chosen"] == pytest.approx(0.5 * 2.0)
    assert metrics["rewards/rejected"] == pytest.approx(0.5 * -1.0)
    assert metrics["rewards/margins"] == pytest.approx(1.5)
    assert metrics["rewards/accuracy"] == 1.0


def test_soft_dpo_with_p_one_is_standard_dpo():
    # Hand computed: Δ = (-5 - -6) - (-9 - -8) = 1 - (-1) = 2 ; β = 0.1 -> -log σ(0.2) = 0.598139
    pc, pr, rc, rr = [torch.tensor([v]) for v in (-5.0, -9.0, -6.0, -8.0)]
    loss, _ = soft_dpo_loss(pc, pr, rc, rr, torch.tensor([1.0]), beta=0.1)
    assert loss.item() == pytest.approx(0.598139, abs=1e-6)
    assert loss.item() == pytest.approx(-_log_sigmoid(0.2), rel=1e-6)


def test_soft_dpo_is_symmetric_in_the_label():
    pc, pr, rc, rr = (torch.tensor([-3.0, -4.0]), torch.tensor([-5.0, -1.0]),
                      torch.tensor([-3.5, -4.0]), torch.tensor([-4.0, -2.0]))
    forward, _ = soft_dpo_loss(pc, pr, rc, rr, torch.tensor([0.7, 0.2]), beta=0.3)
    swapped, _ = soft_dpo_loss(pr, pc, rr, rc, torch.tensor([0.3, 0.8]), beta=0.3)
    assert forward.item() == pytest.approx(swapped.item(), rel=1e-6)


def test_weights_scale_each_pair():
    args = (torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -1.0]),
            torch.tensor([-1.5, -1.5]), torch.tensor([-1.5, -1.5]), torch.tensor([1.0, 1.0]))
    full, _ = soft_dpo_loss(*args, beta=1.0)
    first_only, _ = soft_dpo_loss(*args, beta=1.0, weights=torch.tensor([1.0, 0.0]))
    assert first_only.item() == pytest.approx(-_log_sigmoid(1.0) / 2, rel=1e-6)
    assert full.item() > first_only.item()


def test_bradley_terry_soft_and_hard():
    loss, metrics = bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.5]),
                                       torch.tensor([0.6]))
    assert loss.item() == pytest.approx(-(0.6 * _log_sigmoid(1.5) + 0.4 * _log_sigmoid(-1.5)))
    hard, _ = bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.5]), torch.tensor([1.0]))
    assert hard.item() == pytest.approx(-_log_sigmoid(1.5))
    assert metrics["rewards/margins"] == pytest.approx(1.5)


def test_sft_mask_covers_only_the_assistant_turn(tokenizer):
    prompt, answer = "How do I bake bread?", "Mix flour, water and yeast, then bake."
    item = tokenise_turn(tokenizer, prompt, answer, max_length=512)
    prompt_text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    assert item.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert IGNORE_INDEX not in item.labels[n_prompt:]
    labelled = tokenizer.decode(item.labels[n_prompt:])
    assert labelled.startswith(answer) and "<|im_end|>" in labelled
    assert "user" not in labelled and prompt not in labelled
    assert item.input_ids[n_prompt:] == item.labels[n_prompt:]


def test_long_turns_keep_the_answer_and_cut_the_prompt_from_the_left(tokenizer):
    prompt = " ".join(f"word{i}" for i in range(400))
    answer = "Short answer."
    item = tokenise_turn(tokenizer, prompt, answer, max_length=64)
    assert len(item.input_ids) == 64
    assert tokenizer.decode([t for t in item.labels if t != IGNORE_INDEX]).startswith(answer)


def test_batch_padding_keeps_labels_off_the_padding(tokenizer):
    batch = sft_batch(tokenizer, [SFTExample("a", "hi", "hello"),
                                  SFTExample("b", "a longer question here",
                                             "a longer answer here")], 512)
    pad = batch["attention_mask"] == 0
    assert pad.any()
    assert (batch["labels"][pad] == IGNORE_INDEX).all()


def test_gathered_log_probs_equal_the_full_softmax(tiny_path, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_path).eval()
    batch = sft_batch(tokenizer, [SFTExample("a", "hi", "hello there"),
                                  SFTExample("b", "2+2?", "four")], 512)
    with torch.no_grad():
        ours = sequence_logps(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        labels = batch["labels"][:, 1:]
        mask = labels != IGNORE_INDEX
        picked = logp.gather(2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        reference = (picked * mask).sum(dim=1)
        nll = -(picked * mask).sum(dim=1) / mask.sum(dim=1)
        assert torch.allclose(ours, reference, atol=1e-4)
        assert sft_loss(model, batch).item() == pytest.approx(nll.mean().item(), rel=1e-5)
