"""Losses: SFT on assistant tokens, soft-label DPO, soft-label Bradley-Terry, RLOO.

Soft labels come from the judge (``p_chosen`` = probability that ``chosen`` is better).
With ``p = 1`` both preference losses reduce to their usual hard-label forms.

Log-probabilities are computed without materialising the full ``[batch, length, vocab]``
logits: the decoder's hidden states are gathered at the label positions first and only
those rows go through the output layer. Prompts are most of each sequence, so this saves
most of the memory and time of the output layer (49k-token vocabulary for SmolLM2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.data import IGNORE_INDEX


def token_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of every labelled token, flat, and the batch row each one belongs to.

    ``model`` is a causal LM (plain or wrapped by peft); position ``t`` predicts token ``t+1``.
    """
    decoder = model.get_decoder()
    head = model.get_output_embeddings()
    # use_cache=False: training needs no KV cache, and building one costs memory.
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask,
                     use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    selected = targets != IGNORE_INDEX
    rows = torch.arange(labels.shape[0],
                        device=labels.device).unsqueeze(1).expand_as(targets)[selected]
    logits = head(hidden[:, :-1][selected]).float()
    picked = targets[selected]
    logps = logits.gather(1, picked.unsqueeze(1)).squeeze(1) - torch.logsumexp(logits, dim=-1)
    return logps, rows


def sequence_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the answer tokens' log-probabilities, one value per row."""
    logps, rows = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    out = torch.zeros(batch["input_ids"].shape[0], dtype=logps.dtype, device=logps.device)
    return out.index_add(0, rows, logps)


def pair_logps(model, pair, pad_id: int = 0) -> torch.Tensor:
    """``sequence_logps`` of a pair's two rows (chosen, rejected), with the shared prefix (the
    prompt) computed once: its key/value cache is repeated for both answers. The prompt is most
    of each row, so this costs about half the tokens of two full rows, in time and activations.
    """
    decoder = model.get_decoder()
    head = model.get_output_embeddings()
    device = head.weight.device
    rests = [pair.chosen, pair.rejected]
    prefix = torch.tensor([pair.prefix], dtype=torch.long, device=device)
    out = decoder(input_ids=prefix, use_cache=True)
    last = out.last_hidden_state[:, -1:]  # predicts each rest's first token
    width = max(len(r.input_ids) for r in rests)
    if width == 0:
        return torch.zeros(2, device=device)
    cache = out.past_key_values
    cache.batch_repeat_interleave(2)
    ids = torch.full((2, width), pad_id, dtype=torch.long, device=device)
    labels = torch.full((2, width), IGNORE_INDEX, dtype=torch.long, device=device)
    mask = torch.zeros((2, len(pair.prefix) + width), dtype=torch.long, device=device)
    mask[:, :len(pair.prefix)] = 1
    for row, rest in enumerate(rests):
        n = len(rest.input_ids)
        ids[row, :n] = torch.tensor(rest.input_ids)
        labels[row, :n] = torch.tensor(rest.labels)
        mask[row, len(pair.prefix):len(pair.prefix) + n] = 1
    positions = torch.arange(len(pair.prefix), len(pair.prefix) + width,
                             device=device).expand(2, width)
    hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=positions,
                     past_key_values=cache, use_cache=True).last_hidden_state
    predictors = torch.cat([last.expand(2, 1, -1), hidden[:, :-1]], dim=1)
    selected = labels != IGNORE_INDEX
    rows = torch.arange(2, device=device).unsqueeze(1).expand_as(labels)[selected]
    logits = head(predictors[selected]).float()
    picked = labels[selected]
    logps = logits.gather(1, picked.unsqueeze(1)).squeeze(1) - torch.logsumexp(logits, dim=-1)
    return torch.zeros(2, dtype=logps.dtype, device=device).index_add(0, rows, logps)


def sft_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Weighted mean over examples of each example's mean token NLL on its assistant tokens."""
    logps, rows = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    n = batch["input_ids"].shape[0]
    total = torch.zeros(n, dtype=logps.dtype, device=logps.device).index_add(0, rows, -logps)
    count = torch.zeros(n, dtype=logps.dtype, device=logps.device).index_add(
        0, rows, torch.ones_like(logps))
    per_example = total / count.clamp(min=1)
    return (per_example * batch["weights"].to(per_example)).mean()


def soft_dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                  ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, p_chosen: torch.Tensor,
                  beta: float, weights: torch.Tensor | None = None,
                  ) -> tuple[torch.Tensor, dict[str, float]]:
    """``-(p log σ(βΔ) + (1-p) log σ(-βΔ))`` with ``Δ = (π_c - ref_c) - (π_r - ref_r)``.

    Inputs are per-pair sequence log-probabilities. Returns the weighted mean loss and
    metrics named like TRL's (``rewards/chosen`` = mean β(π_c - ref_c), ...).
    """
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    logits = chosen_reward - rejected_reward  # = βΔ
    losses = -(p_chosen * F.logsigmoid(logits) + (1 - p_chosen) * F.logsigmoid(-logits))
    if weights is not None:
        losses = losses * weights
    loss = losses.mean()
    with torch.no_grad():
        agree = ((logits > 0) == (p_chosen > 0.5)).float()
        metrics = {
            "rewards/chosen": chosen_reward.mean().item(),
            "rewards/rejected": rejected_reward.mean().item(),
            "rewards/margins": logits.mean().item(),
            "rewards/accuracy": agree.mean().item(),
            "logps/chosen": policy_chosen.mean().item(),
            "logps/rejected": policy_rejected.mean().item(),
        }
    return loss, metrics


def bradley_terry_loss(reward_chosen: torch.Tensor, reward_rejected: torch.Tensor,
                       p_chosen: torch.Tensor, weights: torch.Tensor | None = None,
                       ) -> tuple[torch.Tensor, dict[str, float]]:
    """Soft-label preference-model loss ``-(p log σ(r_c - r_r) + (1-p) log σ(r_r - r_c))``."""
    diff = reward_chosen - reward_rejected
    losses = -(p_chosen * F.logsigmoid(diff) + (1 - p_chosen) * F.logsigmoid(-diff))
    if weights is not None:
        losses = losses * weights
    with torch.no_grad():
        metrics = {
            "rewards/chosen": reward_chosen.mean().item(),
            "rewards/rejected": reward_rejected.mean().item(),
            "rewards/margins": diff.mean().item(),
            "rewards/accuracy": ((diff > 0) == (p_chosen > 0.5)).float().mean().item(),
        }
    return losses.mean(), metrics


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Leave-one-out advantages of ``[groups, k]`` rewards (k answers to one prompt per row):
    each answer's reward minus the mean reward of the other ``k - 1`` (RLOO, Ahmadian et al.
    2024): an unbiased baseline that needs no value model."""
    k = rewards.shape[1]
    if k < 2:
        raise ValueError(f"RLOO needs at least 2 samples per prompt, got {k}")
    baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)
    return rewards - baseline


def rloo_loss(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor,
              rows: torch.Tensor, advantages: torch.Tensor, clip: float, beta: float,
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped policy-gradient loss with a KL penalty, per token, averaged per answer, then over
    answers.

    ``logps``, ``old_logps`` (the policy that sampled the answers) and ``ref_logps`` (the round's
    reference) are flat per-token log-probabilities; ``rows[t]`` is the answer token ``t``
    belongs to; ``advantages`` holds one value per answer. Per token, with ``ρ = exp(logp -
    old)`` and ``d = ref - logp``::

        max(-A ρ, -A clip(ρ, 1-clip, 1+clip)) + beta (exp(d) - d - 1)

    The KL term is the k3 estimator (non-negative, zero where the policy equals the reference).
    """
    n = advantages.shape[0]
    adv = advantages[rows]
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - clip, 1 + clip)
    pg = torch.maximum(-adv * ratio, -adv * clipped)
    delta = ref_logps - logps
    kl = torch.exp(delta) - delta - 1
    per_token = pg + beta * kl
    zeros = torch.zeros(n, dtype=per_token.dtype, device=per_token.device)
    count = zeros.index_add(0, rows, torch.ones_like(per_token)).clamp(min=1)
    per_answer = zeros.index_add(0, rows, per_token) / count
    loss = per_answer.mean()
    with torch.no_grad():
        metrics = {
            "rl/pg_loss": (zeros.index_add(0, rows, pg) / count).mean().item(),
            "rl/kl": (zeros.index_add(0, rows, kl) / count).mean().item(),
            "rl/ratio": ratio.mean().item(),
            "rl/clip_fraction": ((ratio - 1).abs() > clip).float().mean().item(),
        }
    return loss, metrics
