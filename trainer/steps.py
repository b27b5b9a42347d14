"""Training steps for the policy (SFT, soft DPO, RLOO) and the preference model (Bradley-Terry).

A round always starts from the last promoted weights:

* LoRA (default): fresh adapters are attached at round start. The DPO reference policy is
  the same model with its adapters disabled, i.e. exactly the round-start policy, at no
  memory cost. At round end the adapters are merged (kept) or dropped (rejected round).
* Full fine-tuning: a frozen deep copy made at round start is the reference and the
  snapshot a rejected round returns to.

Checkpoints hold merged weights only (safetensors, ``config.json``, tokenizer), so serving
and ``AutoModelForCausalLM.from_pretrained`` load them with no peft involved.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from pathlib import Path

import torch

from serving.reward_model import RewardModel
from trainer.config import TrainerConfig
from trainer.data import (
    PreferenceExample,
    RLSample,
    SFTExample,
    preference_batch,
    rl_batch,
    sft_batch,
)
from trainer.losses import (
    bradley_terry_loss,
    pair_logps,
    rloo_loss,
    sequence_logps,
    sft_loss,
    soft_dpo_loss,
    token_logps,
)
from trainer.precision import MixedPrecision, autocast_dtype, whole_step

logger = logging.getLogger(__name__)


def _lora_config(config: TrainerConfig, causal_lm: bool):
    from peft import LoraConfig, TaskType

    return LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_targets), bias="none",
        task_type=TaskType.CAUSAL_LM if causal_lm else None,
    )


def _attach_lora(module, config: TrainerConfig, causal_lm: bool):
    from peft import get_peft_model

    try:
        return get_peft_model(module, _lora_config(config, causal_lm))
    except ValueError as exc:
        raise ValueError(f"lora_targets={config.lora_targets} do not match this model's modules "
                         f"({exc}); set lora_targets to its projection names") from exc


def _detach_lora(peft_model, keep: bool):
    base = peft_model.merge_and_unload() if keep else peft_model.unload()
    return base


def _clip_and_step(optimizer, params, loss: torch.Tensor, max_grad_norm: float) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return _clip_and_apply(optimizer, params, max_grad_norm)


def _clip_and_apply(optimizer, params, max_grad_norm: float) -> float:
    """Clip the gradients already accumulated and take the optimizer step."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else math.inf)
    optimizer.step()
    return float(norm)


def _set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _pair_key(example: PreferenceExample) -> tuple[str, str, str]:
    return (example.prompt, example.chosen, example.rejected)


def _sample_key(sample: RLSample) -> tuple[str, str, bool]:
    return (sample.prompt, sample.answer, sample.truncated)


class PolicyLearner:
    """The policy: a causal LM trained with SFT and soft-label DPO."""

    def __init__(self, model_path: str | Path, config: TrainerConfig):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # On torch's default device: `cai trainer` sets it from CAI_DEVICE (cpu unless asked).
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch.float32).to(torch.get_default_device())
        self._ref = None
        self._optimizer = None
        self._params: list[torch.nn.Parameter] = []
        device_type = next(self.model.parameters()).device.type
        self.precision = MixedPrecision(autocast_dtype(config.precision, device_type),
                                        device_type)
        logger.info("policy training steps in %s (precision %s)",
                    "bfloat16" if self.precision.dtype else "float32", config.precision)
        # The round's reference log-probabilities by pair text: (chosen, rejected).
        self._ref_logps: dict[tuple[str, str, str], tuple[float, float]] = {}
        # The reference's per-token log-probabilities of each RL answer, by (prompt, answer).
        self._ref_tokens: dict[tuple[str, str, bool], torch.Tensor] = {}
        self.in_round = False

    # --- round lifecycle -----------------------------------------------------------------
    def begin_round(self, seed: int) -> None:
        if self.in_round:
            raise RuntimeError("begin_round called twice; call end_round first")
        torch.manual_seed(seed)
        if self.config.lora:
            self.model = _attach_lora(self.model, self.config, causal_lm=True)
        else:
            self._ref = copy.deepcopy(self.model).eval().requires_grad_(False)
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        self._optimizer = torch.optim.AdamW(self._params, lr=self.config.lr,
                                            weight_decay=self.config.weight_decay)
        self.precision.begin_round(*[m for m in (self.model, self._ref) if m is not None])
        self.in_round = True

    def end_round(self, keep: bool) -> None:
        """Merge the round's update into the weights (``keep``) or return to the round start."""
        if not self.in_round:
            raise RuntimeError("end_round called outside a round")
        self.precision.end_round()
        if self.config.lora:
            self.model = _detach_lora(self.model, keep)
        elif not keep:
            self.model.load_state_dict(self._ref.state_dict())
        self._ref = None
        self._optimizer = None
        self._params = []
        self._ref_logps = {}
        self._ref_tokens = {}
        self.model.eval()
        self.in_round = False

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """A copy of the weights this round trains (the adapters under LoRA)."""
        return {name: p.detach().clone() for name, p in self.model.named_parameters()
                if p.requires_grad}

    @torch.no_grad()
    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Return the trained weights to ``state`` (from ``trainable_state`` in this round)."""
        for name, p in self.model.named_parameters():
            if name in state:
                p.copy_(state[name])

    # --- steps ---------------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        """The learning rate of the next steps (the round's schedule sets it before each)."""
        _set_lr(self._optimizer, lr)

    @whole_step
    @torch.no_grad()
    def reference_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The reference policy's log-probabilities of the batch's rows (chosen, then rejected):
        precomputed for this round when ``precompute_reference`` saw its examples."""
        if "ref_logps" in batch:
            return batch["ref_logps"]
        with self._reference() as reference, self.precision.forward():
            return self._logps(reference, batch)

    @contextlib.contextmanager
    def _reference(self):
        """The round-start policy: under LoRA the model with its adapters off, else the frozen
        copy made at round start."""
        if self.config.lora:
            with self.model.disable_adapter():
                yield self.model
        else:
            yield self._ref

    def _logps(self, model, batch: dict) -> torch.Tensor:
        if "pairs" not in batch:
            return sequence_logps(model, batch)
        both = torch.stack([pair_logps(model, pair, self.tokenizer.pad_token_id)
                            for pair in batch["pairs"]])
        return torch.cat([both[:, 0], both[:, 1]])

    @whole_step
    @torch.no_grad()
    def precompute_reference(self, examples: list[PreferenceExample]) -> None:
        """Compute the reference log-probabilities of ``examples`` once for the round: the
        reference (the round-start policy) does not change during it, so a pair seen in several
        steps or epochs costs one reference pass, and no step pays for one."""
        self.model.eval()
        for start in range(0, len(examples), self.config.batch_size):
            chunk = [e for e in examples[start:start + self.config.batch_size]
                     if _pair_key(e) not in self._ref_logps]
            if not chunk:
                continue
            ref = self.reference_logps(self.preference_batch(chunk))
            n = len(chunk)
            for i, example in enumerate(chunk):
                self._ref_logps[_pair_key(example)] = (float(ref[i]), float(ref[n + i]))

    @whole_step
    def sft_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        self.model.train()
        with self.precision.forward():
            loss = sft_loss(self.model, batch)
        norm = _clip_and_step(self._optimizer, self._params, loss, self.config.max_grad_norm)
        return {"loss/sft": loss.item(), "grad_norm/sft": norm}

    @whole_step
    def dpo_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One optimizer step on the batch. With ``pairs`` (``preference_batch``) pair by pair:
        each pair's prompt is computed once for both answers, and its gradient is accumulated
        before the next pair runs, so only one pair's activations are held at a time (the same
        update as the whole batch at once: the loss is a mean over pairs)."""
        n = batch["p_chosen"].shape[0]
        ref = self.reference_logps(batch)
        self.model.train()
        p, w, beta = batch["p_chosen"], batch["weights"], self.config.beta
        if "pairs" not in batch:
            with self.precision.forward():
                logps = sequence_logps(self.model, batch)
            loss, metrics = soft_dpo_loss(logps[:n], logps[n:], ref[:n], ref[n:], p, beta, w)
            norm = _clip_and_step(self._optimizer, self._params, loss, self.config.max_grad_norm)
            return {"loss/dpo": loss.item(), "grad_norm/dpo": norm, **metrics}
        self._optimizer.zero_grad(set_to_none=True)
        chosen, rejected = [], []
        for i, pair in enumerate(batch["pairs"]):
            with self.precision.forward():
                lp = pair_logps(self.model, pair, self.tokenizer.pad_token_id)
            one, _ = soft_dpo_loss(lp[:1], lp[1:], ref[i:i + 1], ref[n + i:n + i + 1],
                                   p[i:i + 1], beta, w[i:i + 1])
            (one / n).backward()
            chosen.append(lp[0].detach())
            rejected.append(lp[1].detach())
        loss, metrics = soft_dpo_loss(torch.stack(chosen), torch.stack(rejected), ref[:n],
                                      ref[n:], p, beta, w)
        norm = _clip_and_apply(self._optimizer, self._params, self.config.max_grad_norm)
        return {"loss/dpo": loss.item(), "grad_norm/dpo": norm, **metrics}

    @whole_step
    @torch.no_grad()
    def precompute_rl_reference(self, samples: list[RLSample]) -> None:
        """The reference's per-token log-probabilities of every RL answer, once a round. The
        answers were sampled by the serving policy, which is the round-start policy, so these
        are also the sampling policy's (``old``) log-probabilities of the clipped ratio."""
        self.model.eval()
        for start in range(0, len(samples), self.config.batch_size):
            chunk = [s for s in samples[start:start + self.config.batch_size]
                     if _sample_key(s) not in self._ref_tokens]
            if not chunk:
                continue
            batch = self.rl_batch(chunk)
            with self._reference() as reference, self.precision.forward():
                logps, rows = token_logps(reference, batch["input_ids"], batch["attention_mask"],
                                          batch["labels"])
            for i, sample in enumerate(chunk):
                self._ref_tokens[_sample_key(sample)] = logps[rows == i].clone()

    @whole_step
    def rl_step(self, samples: list[RLSample]) -> dict[str, float]:
        """One RLOO step on sampled answers (``precompute_rl_reference`` saw them first)."""
        batch = self.rl_batch(samples)
        self.model.train()
        with self.precision.forward():
            logps, rows = token_logps(self.model, batch["input_ids"], batch["attention_mask"],
                                      batch["labels"])
        ref = torch.cat([self._ref_tokens[_sample_key(s)] for s in samples]).to(logps.device)
        loss, metrics = rloo_loss(logps, ref, ref, rows, batch["advantages"].to(logps.device),
                                  self.config.rl_clip, self.config.rl_beta)
        norm = _clip_and_step(self._optimizer, self._params, loss, self.config.max_grad_norm)
        return {"loss/rl": loss.item(), "grad_norm/rl": norm, **metrics}

    def rl_batch(self, samples: list[RLSample]):
        return rl_batch(self.tokenizer, samples, self.config.max_length)

    def sft_batch(self, examples: list[SFTExample], weights: list[float] | None = None):
        return sft_batch(self.tokenizer, examples, self.config.max_length, weights)

    def preference_batch(self, examples: list[PreferenceExample]):
        batch = preference_batch(self.tokenizer, examples, self.config.max_length)
        if examples and all(_pair_key(e) in self._ref_logps for e in examples):
            refs = [self._ref_logps[_pair_key(e)] for e in examples]
            batch["ref_logps"] = torch.tensor([c for c, _ in refs] + [r for _, r in refs])
        return batch

    # --- probe ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, sft_probe: list[SFTExample],
                 pref_probe: list[PreferenceExample]) -> dict[str, float]:
        """Probe SFT loss and how often the policy's per-token log-likelihood prefers ``chosen``."""
        self.model.eval()
        out: dict[str, float] = {}
        bs = self.config.batch_size
        if sft_probe:
            total = 0.0
            for start in range(0, len(sft_probe), bs):
                chunk = sft_probe[start:start + bs]
                batch = self.sft_batch(chunk, weights=[1.0] * len(chunk))
                total += sft_loss(self.model, batch).item() * len(chunk)
            out["probe/sft_loss"] = total / len(sft_probe)
        if pref_probe:
            agree, margin = 0.0, 0.0
            for start in range(0, len(pref_probe), bs):
                chunk = pref_probe[start:start + bs]
                batch = self.preference_batch(chunk)
                n = len(chunk)
                sums = sequence_logps(self.model, batch)
                counts = (batch["labels"][:, 1:] != -100).sum(dim=1).clamp(min=1)
                per_token = sums / counts
                diff = per_token[:n] - per_token[n:]
                agree += ((diff > 0) == (batch["p_chosen"] > 0.5)).float().sum().item()
                margin += diff.sum().item()
            out["probe/pref_accuracy"] = agree / len(pref_probe)
            out["probe/pref_margin"] = margin / len(pref_probe)
        return out

    def frozen_generator(self):
        """A text generator over a copy of the current weights, the round's adapters folded in,
        for the gate: it answers the dev prompts on another thread while the round trains on,
        and nothing the training does reaches the copy. Folding the adapters in skips their
        extra matmuls (about a fifth faster on CPU, the same greedy text)."""
        from serving.textgen import TextGenerator

        model = copy.deepcopy(self.model)
        if self.config.lora and self.in_round:
            model = model.merge_and_unload()
        for parameter in model.parameters():
            parameter.grad = None
            parameter.requires_grad_(False)
        return TextGenerator.from_model(model, self.tokenizer)

    def save(self, folder: str | Path) -> None:
        """Merged weights (safetensors), model config and tokenizer; loadable without peft."""
        if self.in_round:
            raise RuntimeError("save called inside a round; end_round(keep=True) merges first")
        self.model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)


class PreferenceLearner:
    """The preference model (``serving.reward_model.RewardModel``), trained on soft labels with
    the Bradley-Terry loss; under LoRA its score head trains in full beside the adapters."""

    def __init__(self, model_path: str | Path, config: TrainerConfig):
        self.config = config
        self.pm = RewardModel.from_pretrained(model_path, seed=config.seed).to(
            torch.get_default_device())
        self.tokenizer = self.pm.tokenizer
        self._head = None  # the score head at round start, restored by a rejected round
        self._snapshot = None  # full fine-tuning: the whole model at round start
        self._optimizer = None
        self._params: list[torch.nn.Parameter] = []
        self.in_round = False

    def _score_head(self) -> torch.nn.Module:
        model = self.pm.model
        return (model.base_model.model if self.config.lora and self.in_round else model).score

    def begin_round(self, seed: int) -> None:
        if self.in_round:
            raise RuntimeError("begin_round called twice; call end_round first")
        torch.manual_seed(seed)
        self._head = copy.deepcopy(self.pm.model.score.state_dict())
        if self.config.lora:
            self.pm.model = _attach_lora(self.pm.model, self.config, causal_lm=False)
        else:
            self._snapshot = copy.deepcopy(self.pm.model.state_dict())
        self.in_round = True
        self._score_head().requires_grad_(True)
        self._params = [p for p in self.pm.parameters() if p.requires_grad]
        self._optimizer = torch.optim.AdamW(self._params, lr=self.config.lr,
                                            weight_decay=self.config.weight_decay)

    def end_round(self, keep: bool) -> None:
        if not self.in_round:
            raise RuntimeError("end_round called outside a round")
        if self.config.lora:
            self.pm.model = _detach_lora(self.pm.model, keep)
        elif not keep:
            self.pm.model.load_state_dict(self._snapshot)
        if not keep:
            self.pm.model.score.load_state_dict(self._head)
        self._head = self._snapshot = self._optimizer = None
        self._params = []
        self.pm.eval()
        self.in_round = False

    def preference_batch(self, examples: list[PreferenceExample]):
        """Chosen rows, then rejected rows, as the reward model renders them."""
        n = self.config.max_length
        batch = self.pm.encode([e.prompt for e in examples] * 2,
                               [e.chosen for e in examples] + [e.rejected for e in examples], n)
        batch["p_chosen"] = torch.tensor([e.p_chosen for e in examples], dtype=torch.float32)
        batch["weights"] = torch.tensor([e.weight for e in examples], dtype=torch.float32)
        return batch

    def set_lr(self, lr: float) -> None:
        _set_lr(self._optimizer, lr)

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        self.pm.train()
        n = batch["p_chosen"].shape[0]
        rewards = self.pm(batch["input_ids"], batch["attention_mask"])
        loss, metrics = bradley_terry_loss(rewards[:n], rewards[n:], batch["p_chosen"],
                                           batch["weights"])
        norm = _clip_and_step(self._optimizer, self._params, loss, self.config.max_grad_norm)
        return {"loss/reward": loss.item(), "grad_norm/reward": norm, **metrics}

    @torch.no_grad()
    def accuracy(self, pairs: list[PreferenceExample]) -> tuple[float, float]:
        """(share of pairs whose chosen answer gets the higher reward, mean BT loss)."""
        self.pm.eval()
        agree, loss_sum = 0.0, 0.0
        for start in range(0, len(pairs), self.config.batch_size):
            chunk = pairs[start:start + self.config.batch_size]
            batch = self.preference_batch(chunk)
            n = len(chunk)
            rewards = self.pm(batch["input_ids"], batch["attention_mask"])
            loss, metrics = bradley_terry_loss(rewards[:n], rewards[n:], batch["p_chosen"])
            agree += metrics["rewards/accuracy"] * n
            loss_sum += loss.item() * n
        return agree / max(1, len(pairs)), loss_sum / max(1, len(pairs))

    def evaluate(self, pref_probe: list[PreferenceExample]) -> dict[str, float]:
        if not pref_probe:
            return {}
        accuracy, loss = self.accuracy(pref_probe)
        return {"probe/pm_accuracy": accuracy, "probe/pm_loss": loss}

    def save(self, folder: str | Path) -> None:
        """A standard sequence-classification checkpoint (LoRA merged)."""
        if self.in_round:
            raise RuntimeError("save called inside a round; end_round(keep=True) merges first")
        self.pm.save(folder)
