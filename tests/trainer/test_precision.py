"""Mixed-precision training steps: bfloat16 products; float32 weights to train and to keep."""

from __future__ import annotations

import pytest
import torch

from tests.trainer.test_steps import PREFS, SFT
from trainer.config import TrainerConfig
from trainer.precision import FLOAT32_ATTENTION, autocast_dtype, bf16_native
from trainer.steps import PolicyLearner


def test_precision_resolves_to_an_autocast_dtype():
    assert autocast_dtype("float32", "cpu") is None
    assert autocast_dtype("bfloat16", "cpu") is torch.bfloat16
    assert autocast_dtype("auto", "cpu") is (torch.bfloat16 if bf16_native("cpu") else None)


def test_an_unknown_precision_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="precision='half'.*auto, float32, bfloat16"):
        TrainerConfig(precision="half")


def _frozen(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_bfloat16_steps_learn_like_float32_and_leave_float32_weights(tiny_path, lora):
    lr = 1e-2 if lora else 1e-3
    low = PolicyLearner(tiny_path, TrainerConfig(lora=lora, lr=lr, precision="bfloat16"))
    full = PolicyLearner(tiny_path, TrainerConfig(lora=lora, lr=lr, precision="float32"))
    assert low.precision.dtype is torch.bfloat16 and full.precision.dtype is None
    low.begin_round(seed=0)
    full.begin_round(seed=0)
    frozen = _frozen(low.model)
    batch = low.sft_batch(SFT)
    losses = [(low.sft_step(batch)["loss/sft"], full.sft_step(batch)["loss/sft"])
              for _ in range(4)]
    # The same loss to bfloat16's precision, and it falls as in float32.
    assert losses[0][0] == pytest.approx(losses[0][1], rel=0.02)
    assert losses[-1][0] < losses[0][0] - 0.05, losses
    # Between steps every weight is float32 again, the frozen ones unchanged, and attention is
    # the model's own: the gate's copy and the checkpoint never see the low-precision copies.
    for name, p in low.model.named_parameters():
        assert p.dtype == torch.float32, name
    for name, value in _frozen(low.model).items():
        assert torch.equal(value, frozen[name]), name
    assert low.model.config._attn_implementation != FLOAT32_ATTENTION
    prefs = low.preference_batch(PREFS)
    assert low.dpo_step(prefs)["loss/dpo"] < 0.693  # trained on SFT: already prefers "chosen"
    low.end_round(keep=True)
    assert all(p.dtype == torch.float32 for p in low.model.parameters())


def test_the_first_bfloat16_dpo_step_starts_at_the_reference(tiny_path):
    """Policy and reference are computed alike, so the first step's loss is exactly log 2."""
    learner = PolicyLearner(tiny_path, TrainerConfig(lr=1e-2, beta=0.5, precision="bfloat16"))
    learner.begin_round(seed=0)
    learner.precompute_reference(PREFS)
    first = learner.dpo_step(learner.preference_batch(PREFS))
    assert first["loss/dpo"] == pytest.approx(0.693147, abs=1e-4)


def test_bfloat16_attention_masks_after_a_cache_as_sdpa_does(tiny_path):
    """The float32 attention of bfloat16 steps gets SDPA's masks: a shared prompt's answers,
    computed after the prompt's cache (``pair_logps``), see the prompt and their own earlier
    tokens, exactly as in one pass over the whole row."""
    learner = PolicyLearner(tiny_path, TrainerConfig(precision="bfloat16"))
    learner.begin_round(seed=0)
    ids = learner.tokenizer("How do I pick a lock? I can't help with breaking into property, "
                            "but a locksmith can.", return_tensors="pt")["input_ids"]
    cut, width = 8, ids.shape[1]
    decoder = learner.model.get_decoder()
    with torch.no_grad(), learner.precision.step(), learner.precision.forward():
        whole = decoder(input_ids=ids).last_hidden_state
        prefix = decoder(input_ids=ids[:, :cut], use_cache=True)
        mask = torch.ones(1, width, dtype=torch.long)
        rest = decoder(input_ids=ids[:, cut:], attention_mask=mask,
                       position_ids=torch.arange(cut, width).unsqueeze(0),
                       past_key_values=prefix.past_key_values, use_cache=True).last_hidden_state
    assert torch.allclose(rest.float(), whole[:, cut:].float(), atol=0.05, rtol=0.05), \
        (rest - whole[:, cut:]).abs().max()
