"""Fixtures for the trainer tests: the tiny model (2-layer Llama, SmolLM2 tokenizer)."""

from __future__ import annotations

import pytest
import torch

from core.settings import StackSettings
from serving.models import resolve

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_path() -> str:
    return resolve("tiny", StackSettings().cache_dir)


@pytest.fixture(scope="session")
def tokenizer(tiny_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_path)
