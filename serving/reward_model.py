"""The preference model (RL-CAI's PM) as a standard sequence-classification checkpoint.

A ``RewardModel`` is ``AutoModelForSequenceClassification`` with one label: the reward of an
answer is the score head applied to the last token of the conversation (prompt and answer
rendered with the chat template, both neutralised of control tokens). Saved with
``save_pretrained`` (safetensors) next to its tokenizer, it loads in transformers and TRL as a
reward model, and the Triton ``reward`` role serves the same class (``serving/triton_model.py``)
with the same rendering, so a reward means the same in the trainer and in serving.

Started from a causal LM (the policy's base model), the decoder's weights are kept and the head
is new: seeded and small, so that the first rewards are near 0 and the first Bradley-Terry loss
is near log 2.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from serving.special_tokens import neutralise

logger = logging.getLogger(__name__)


def render(tokenizer, prompt: str, answer: str) -> str:
    """The text a reward is computed on: one user turn and one assistant turn."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": neutralise(prompt, tokenizer)},
         {"role": "assistant", "content": neutralise(answer, tokenizer)}],
        tokenize=False)


class RewardModel(nn.Module):
    """``model`` (a sequence classifier with one label) and its ``tokenizer``."""

    def __init__(self, model: nn.Module, tokenizer):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32,
                        seed: int = 0) -> RewardModel:
        """A saved reward model, or a causal LM given a new head (seeded, small)."""
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        if (Path(path) / "reward_head.safetensors").exists():
            raise ValueError(f"{path} is a preference model saved by an earlier version (a decoder "
                             "plus reward_head.safetensors); train it again: it now saves as a "
                             "standard sequence-classification checkpoint")
        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        config = AutoConfig.from_pretrained(path)
        fresh = not any("ForSequenceClassification" in a for a in config.architectures or [])
        config.num_labels = 1
        # The classifier reads the last non-pad token, so it must know the pad id.
        config.pad_token_id = tokenizer.pad_token_id
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(path, config=config,
                                                                   dtype=dtype)
        if fresh:
            head = model.score
            nn.init.normal_(head.weight, std=1.0 / (config.hidden_size + 1) ** 0.5)
            if head.bias is not None:
                nn.init.zeros_(head.bias)
            logger.info("reward model from %s: a new score head on its decoder", path)
        return cls(model, tokenizer)

    def encode(self, prompts: list[str], answers: list[str], max_length: int = 512
               ) -> dict[str, torch.Tensor]:
        """Right-padded ids of each rendered conversation, cut from the left (the end, where
        the answer is, is what gets scored)."""
        rows = [self.tokenizer(render(self.tokenizer, p, a),
                               add_special_tokens=False)["input_ids"][-max_length:]
                for p, a in zip(prompts, answers, strict=True)]
        width = max((len(r) for r in rows), default=0)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, :len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One reward per row."""
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask,
                            use_cache=False).logits
        return logits.float().squeeze(-1)

    @torch.no_grad()
    def score(self, prompts: list[str], answers: list[str], max_length: int = 512,
              batch_size: int = 8) -> list[float]:
        """Reward of each (prompt, answer): higher means preferred."""
        was_training = self.training
        self.eval()
        device = next(self.model.parameters()).device
        out: list[float] = []
        for start in range(0, len(prompts), batch_size):
            batch = self.encode(prompts[start:start + batch_size],
                                answers[start:start + batch_size], max_length)
            out.extend(self(batch["input_ids"].to(device),
                            batch["attention_mask"].to(device)).tolist())
        self.train(was_training)
        return out

    def save(self, folder: str | Path) -> None:
        """Weights (safetensors, LoRA merged by the caller), config and tokenizer."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
