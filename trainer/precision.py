"""Mixed precision for the training steps: bfloat16 matrix products, float32 everything else.

On a CPU with AMX or AVX512-BF16 a bfloat16 matrix product takes a fraction of the float32 one's
time, but plain autocast gains little on this trainer's steps: it casts every frozen weight
again for every forward pass (autocast caches only the casts of weights that train), and the CPU
flash-attention kernel's backward is about three times slower in bfloat16 than in float32.
``MixedPrecision`` therefore keeps a bfloat16 copy of the frozen linear weights for the round
and swaps it in only while a step runs, and runs attention in float32. The weights that train
(LoRA adapters, or all of them in full fine-tuning), the optimizer state, the output layer and
the log-softmax stay float32, as do the round-start weights that are merged, saved and served.
"""

from __future__ import annotations

import contextlib
import functools

import torch

FLOAT32_ATTENTION = "sdpa_float32"


def bf16_native(device_type: str) -> bool:
    """Whether ``device_type`` computes bfloat16 matrix products in hardware (CPU: AVX512-BF16 or
    AMX through oneDNN; CUDA: compute capability 8 or later)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def autocast_dtype(precision: str, device_type: str) -> torch.dtype | None:
    """The dtype of a training step's matrix products for ``TrainerConfig.precision`` on this
    device, or None for plain float32."""
    if precision == "bfloat16" or (precision == "auto" and bf16_native(device_type)):
        return torch.bfloat16
    return None


@functools.cache
def _register_float32_attention() -> None:
    """Attention in float32 whatever the autocast dtype, with the masks SDPA gets (registered
    once per process, by name; a name without a mask function of its own would get no mask at
    all: no causal order past a cache, no padding)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    def sdpa_float32(module, query, key, value, attention_mask, **kwargs):
        dtype = query.dtype
        with torch.autocast(query.device.type, enabled=False):
            out, weights = sdpa_attention_forward(module, query.float(), key.float(),
                                                  value.float(), attention_mask, **kwargs)
        return out.to(dtype), weights

    AttentionInterface.register(FLOAT32_ATTENTION, sdpa_float32)
    ALL_MASK_ATTENTION_FUNCTIONS.register(FLOAT32_ATTENTION, sdpa_mask)


class MixedPrecision:
    """The precision of one model's training steps. ``step()`` is the context of a whole step
    (forward, backward and optimizer update); ``forward()`` that of its forward passes."""

    def __init__(self, dtype: torch.dtype | None, device_type: str):
        self.dtype = dtype
        self.device_type = device_type
        self._copies: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]] = []
        self._models: list = []
        self._depth = 0  # steps entered and not left: a step may run another (the reference's)
        if dtype is not None:
            _register_float32_attention()

    def begin_round(self, *models) -> None:
        """Make the low-precision copies of the frozen linear weights of ``models`` (the policy
        and, in full fine-tuning, its frozen reference; an output layer is left out, as it
        shares its weights with the input embeddings)."""
        self._models = list(models)
        self._copies = []
        if self.dtype is None:
            return
        for model in models:
            head = model.get_output_embeddings()
            for module in model.modules():
                if isinstance(module, torch.nn.Linear) and module is not head:
                    weight = module.weight
                    if not weight.requires_grad and weight.dtype == torch.float32:
                        self._copies.append((weight, weight.data, weight.data.to(self.dtype)))

    def end_round(self) -> None:
        self._copies = []
        self._models = []

    @contextlib.contextmanager
    def step(self):
        """The low-precision frozen weights and float32 attention, for forward and backward
        alike (autograd keeps the weights a forward pass used). Only the outermost of nested
        steps swaps."""
        outermost = self._depth == 0 and self.dtype is not None and bool(self._models)
        self._depth += 1
        attention = self._swap_in() if outermost else []
        try:
            yield
        finally:
            self._depth -= 1
            if outermost:
                self._swap_out(attention)

    def _swap_in(self) -> list[str]:
        """Put the low-precision copies and the float32 attention in; return the models' own
        attention implementations."""
        for weight, _, low in self._copies:
            weight.data = low
        own = [model.config._attn_implementation for model in self._models]
        for model in self._models:
            model.config._attn_implementation = FLOAT32_ATTENTION
        return own

    def _swap_out(self, attention: list[str]) -> None:
        for model, implementation in zip(self._models, attention):
            model.config._attn_implementation = implementation
        for weight, full, _ in self._copies:
            weight.data = full

    def forward(self):
        """Autocast to ``dtype`` (nothing in float32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def whole_step(method):
    """Run a learner's method (its ``precision`` a ``MixedPrecision``) inside one ``step()``."""

    @functools.wraps(method)
    def wrapped(learner, *args, **kwargs):
        with learner.precision.step():
            return method(learner, *args, **kwargs)
    return wrapped
