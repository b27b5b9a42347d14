"""Preference model (RL-CAI's PM): the base model's decoder plus a scalar head.

The reward of an answer is the head applied to the hidden state of the conversation's last
non-pad token (prompt and answer rendered with the chat template, right padding). It is
trained with the soft-label Bradley-Terry loss on the judge's preferences and can score
answers: ``PreferenceModel.load(folder).score(prompts, answers)``.

Saved as a folder: the decoder (``save_pretrained``, safetensors, LoRA merged), the head in
``reward_head.safetensors``, and the tokenizer.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from trainer.data import Tokenised, chat_full_text, pad_batch

logger = logging.getLogger(__name__)

HEAD_FILE = "reward_head.safetensors"


class PreferenceModel(nn.Module):
    """``decoder`` (e.g. LlamaModel, optionally wrapped by peft) + ``head`` (hidden -> 1)."""

    def __init__(self, decoder: nn.Module, tokenizer, head: nn.Linear | None = None):
        super().__init__()
        self.decoder = decoder
        self.tokenizer = tokenizer
        hidden = decoder.config.hidden_size
        if head is None:
            head = nn.Linear(hidden, 1)
            # Small init: the first rewards start near 0, so the first BT loss is near log 2.
            nn.init.normal_(head.weight, std=1.0 / (hidden + 1) ** 0.5)
            nn.init.zeros_(head.bias)
        self.head = head

    @classmethod
    def from_pretrained(cls, path: str | Path) -> PreferenceModel:
        """A causal LM checkpoint gives a fresh head; a saved preference model keeps its head."""
        from transformers import AutoModel, AutoTokenizer

        decoder = AutoModel.from_pretrained(path, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = cls(decoder, tokenizer)
        head_file = Path(path) / HEAD_FILE
        if head_file.exists():
            state = load_file(str(head_file))
            model.head.load_state_dict(state)
        return model

    load = from_pretrained

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.decoder(input_ids=input_ids, attention_mask=attention_mask,
                              use_cache=False).last_hidden_state
        last = attention_mask.sum(dim=1) - 1  # right padding: last real token
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.head(picked.float()).squeeze(-1)

    def encode(self, prompts: list[str], answers: list[str], max_length: int = 512) -> dict:
        items = []
        for prompt, answer in zip(prompts, answers, strict=True):
            ids = self.tokenizer(chat_full_text(self.tokenizer, prompt, answer),
                                 add_special_tokens=False)["input_ids"]
            ids = ids[-max_length:]  # keep the end: the answer is what gets scored
            items.append(Tokenised(input_ids=ids, labels=ids))
        return pad_batch(items, self.tokenizer.pad_token_id)

    @torch.no_grad()
    def score(self, prompts: list[str], answers: list[str], max_length: int = 512,
              batch_size: int = 8) -> list[float]:
        """Reward of each (prompt, answer): higher means preferred."""
        was_training = self.training
        self.eval()
        out: list[float] = []
        for start in range(0, len(prompts), batch_size):
            batch = self.encode(prompts[start:start + batch_size],
                                answers[start:start + batch_size], max_length)
            out.extend(self(batch["input_ids"], batch["attention_mask"]).tolist())
        self.train(was_training)
        return out

    def save(self, folder: str | Path) -> None:
        """Decoder weights (merge LoRA first), head and tokenizer; safetensors only."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.decoder.save_pretrained(folder, safe_serialization=True)
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()},
                  str(folder / HEAD_FILE))
        self.tokenizer.save_pretrained(folder)
