"""The engine: batched text generation and multiple-choice judging with a causal LM, no Triton.

This is the engine behind every Triton role (``serving/triton_model.py`` is a thin
adapter around it) and it runs the same in-process (``serving/inference.py``), which is how it
is unit-tested and benchmarked (``cai bench``, ``cai bench-serving``). Its request and response
types live in ``serving/requests.py``, its prefill in ``serving/prefill.py``.

Generation is a custom sampling loop rather than ``model.generate`` because one batch
mixes requests with different ``max_new_tokens``, temperature, top-p, seed and stop
strings. Rows are left-padded; each row samples with its own ``torch.Generator`` so a
seeded request gives the same text whatever else shares its batch; finished rows are
dropped from the batch and the KV cache, so a short request does not pay for a long one.
A prompt prefix that the whole batch shares (the few-shot block of critique, revision and judge
prompts) is computed once, kept in a small LRU across batches, and attended to at batch size 1
rather than copied into every row (``serving/prefill.py``, ``serving/shared_prefix_attention.py``).
``logprob_sum`` is the sum of the *model's* log-probabilities (temperature 1, no top-p)
of the generated tokens, which is what a policy-gradient or DPO step needs.

Judging scores each choice string (for example ``"(A)"``) as a continuation of the
prompt. Prompt and choice are tokenised jointly, because a tokenizer may merge the last
prompt characters with the first choice characters; every choice is then scored from
the longest token prefix shared by all choices, so each score is
``log P(rest of prompt + choice | shared prefix)`` and a softmax over choices is a proper
posterior. Chain-of-thought judging generates reasoning first, then scores, and clamps
the probabilities into a range (default 0.4-0.6, as in Bai et al. 2022).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from serving.prefill import Prefiller
from serving.requests import GenRequest, GenResult, JudgeOutput, JudgeRequest, RequestError
from serving.shared_prefix_attention import SharedPrefix
from serving.shared_prefix_attention import install as install_shared_prefix_attention
from serving.special_tokens import neutralise

logger = logging.getLogger(__name__)


@dataclass
class _Row:
    """One sequence being generated (one sample of one request)."""

    request_index: int
    sample_index: int
    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    generator: torch.Generator
    stop: tuple[str, ...]
    generated: list[int] = field(default_factory=list)
    logprob_sum: float = 0.0
    finish_reason: str | None = None
    stop_at: int | None = None  # character offset of the first stop string in the text


MAX_NUCLEUS_DRAWS = 64


def _sample_nucleus(probs: torch.Tensor, top_p: float, generator: torch.Generator) -> int:
    """One token from the top-p nucleus of ``probs``, renormalised.

    Rejection sampling instead of sorting the vocabulary: draw from the full distribution
    and accept the token if the mass of strictly more probable tokens is below ``top_p``
    (that is, it belongs to the nucleus). Accepted draws follow the renormalised nucleus
    exactly; about 1/top_p draws are needed, each O(vocab), against an O(vocab log vocab)
    sort per row and step.
    """
    cumulative = torch.cumsum(probs, dim=0)
    for _ in range(MAX_NUCLEUS_DRAWS if top_p < 1.0 else 1):
        u = torch.rand((), generator=generator, device="cpu") * cumulative[-1]
        token = int(torch.searchsorted(cumulative, u, right=True).clamp(max=len(probs) - 1))
        if top_p >= 1.0 or float(probs[probs > probs[token]].sum()) < top_p:
            return token
    # Very small top_p: fall back to an explicit sort (rarely reached).
    values, order = torch.sort(probs, descending=True)
    mass = torch.cumsum(values, dim=0)
    cut = int(torch.searchsorted(mass, torch.tensor(top_p, device="cpu"))) + 1
    mass = mass[:cut]
    u = torch.rand((), generator=generator, device="cpu") * mass[-1]
    return int(order[int(torch.searchsorted(mass, u, right=True).clamp(max=cut - 1))])


def _make_generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed if seed is not None else random.SystemRandom().randrange(2**63))
    return generator


class TextGenerator:
    """A causal LM plus tokenizer that serves batched generation and choice scoring."""

    def __init__(self, source: str | Path, threads: int | None = None, dtype: str = "float32",
                 max_context: int | None = None, prefix_min_tokens: int = 32,
                 prefix_cache_entries: int = 4, device: str = "cpu") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(int(threads))
        if device != "cpu":
            # Every tensor the engine makes (prefill, cache, masks) then lands on the GPU; one
            # engine per process, as Triton runs each instance in its own process.
            torch.set_default_device(device)
        started = time.monotonic()
        model = AutoModelForCausalLM.from_pretrained(
            str(source), dtype=getattr(torch, dtype)).to(device)
        self._attach(str(source), model, AutoTokenizer.from_pretrained(str(source)), max_context,
                     prefix_min_tokens, prefix_cache_entries)
        logger.info("loaded %s in %.1fs (threads=%s)", self.source, time.monotonic() - started,
                    torch.get_num_threads())

    @classmethod
    def from_model(cls, model, tokenizer, source: str = "in-memory") -> TextGenerator:
        """Generate with a model already in memory (the trainer's policy in the middle of a round).

        No prefix cache: the weights may change between calls."""
        generator = cls.__new__(cls)
        generator._attach(source, model, tokenizer, None, 0, 0)
        return generator

    def _attach(self, source: str, model, tokenizer, max_context: int | None,
                prefix_min_tokens: int,
                prefix_cache_entries: int) -> None:
        self.source = source
        self.core_share = None  # a serving.core_share.CoreShare when instances share the cores
        self.tokenizer = tokenizer
        self.model = model
        self.model.eval()
        if prefix_min_tokens > 0 and not install_shared_prefix_attention(self.model):
            logger.warning("%s: shared-prefix attention does not fit this architecture; "
                           "prompt prefixes are not shared", source)
            prefix_min_tokens = 0  # 0 disables prefix sharing
        config = self.model.config
        self.max_context = max_context or getattr(config, "max_position_embeddings", None) or 2048
        eos = set()
        for value in (self.tokenizer.eos_token_id,
                      getattr(self.model.generation_config, "eos_token_id", None)):
            if isinstance(value, int):
                eos.add(value)
            elif isinstance(value, (list, tuple)):
                eos.update(int(v) for v in value)
        self.eos_ids = eos
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (min(eos) if eos else 0)
        self.prefill = Prefiller(self.model, self.pad_id, self._forward, prefix_min_tokens,
                                 prefix_cache_entries)

    # ----------------------------------------------------------------- prompts
    def format_prompt(self, prompt: str, chat: bool, system: str | None = None) -> str:
        """Chat-template the prompt as one user turn when asked and possible; else raw text.
        Special-token spellings in the prompt and the system prompt are neutralised
        (``serving/special_tokens.py``): they never become the template's control tokens."""
        prompt = neutralise(prompt, self.tokenizer)
        system = neutralise(system, self.tokenizer) if system else system
        if not chat or not getattr(self.tokenizer, "chat_template", None):
            return prompt
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)

    def encode(self, text: str) -> list[int]:
        # The chat template already contains its special tokens; raw prompts get none either,
        # so prompt+choice scoring tokenises exactly the text it is given.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # --------------------------------------------------------------- generate
    @torch.inference_mode()
    def generate(self, requests: list[GenRequest]) -> list[list[GenResult]]:
        """Complete every request; returns, per request, ``num_samples`` results."""
        rows: list[_Row] = []
        for index, request in enumerate(requests):
            request.validate()
            ids = self.encode(self.format_prompt(request.prompt, request.chat, request.system)
                              + request.response_prefix)
            if not ids:
                bos = self.tokenizer.bos_token_id
                ids = [bos if bos is not None else self.pad_id]
            if len(ids) + request.max_new_tokens > self.max_context:
                raise RequestError(
                    f"prompt has {len(ids)} tokens and max_new_tokens is {request.max_new_tokens}: "
                    f"more than the model's context of {self.max_context}; shorten the prompt or "
                    "lower max_new_tokens"
                )
            for sample in range(request.num_samples):
                seed = None if request.seed is None else request.seed + sample
                rows.append(_Row(
                    request_index=index, sample_index=sample, prompt_ids=ids,
                    max_new_tokens=request.max_new_tokens, temperature=float(request.temperature),
                    top_p=float(request.top_p), generator=_make_generator(seed),
                    stop=tuple(request.stop),
                ))
        if rows:
            self._run(rows)
        results: list[list[GenResult]] = [[] for _ in requests]
        for row in rows:
            result = self._result(row)
            prefix = requests[row.request_index].response_prefix
            results[row.request_index].append(
                replace(result, text=prefix + result.text) if prefix else result)
        return results

    def _result(self, row: _Row) -> GenResult:
        ids = row.generated
        if row.finish_reason == "eos":
            ids = ids[:-1]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if row.stop_at is not None:
            text = text[: row.stop_at]
        return GenResult(
            text=text, prompt_tokens=len(row.prompt_ids), completion_tokens=len(row.generated),
            logprob_sum=row.logprob_sum, token_ids=list(row.generated),
            finish_reason=row.finish_reason or "length",
        )

    def _run(self, rows: list[_Row]) -> None:
        cache, prefix, mask, logits, next_pos = self.prefill([r.prompt_ids for r in rows])
        active = list(range(len(rows)))  # indices into rows, one per batch row
        while True:
            choices = self._choose(logits, [rows[i] for i in active])
            tokens = [token for token, _ in choices]
            keep: list[int] = []
            for b, i in enumerate(active):
                if self._append(rows[i], choices[b]):
                    keep.append(b)
            if not keep:
                return
            if len(keep) < len(active):
                index = torch.tensor(keep, dtype=torch.long)
                cache.batch_select_indices(index)
                mask, next_pos, tokens_t = mask[index], next_pos[index], torch.tensor(tokens)[index]
                active = [active[b] for b in keep]
            else:
                tokens_t = torch.tensor(tokens)
            mask = torch.cat([mask, torch.ones((len(active), 1), dtype=torch.long)], dim=1)
            out = self._forward(prefix, mask, input_ids=tokens_t[:, None],
                                position_ids=next_pos[:, None],
                                past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1, :]
            next_pos = next_pos + 1

    def busy(self):
        """Context for one batch of work: takes this instance's share of the cores when it shares
        them."""
        return self.core_share.busy() if self.core_share is not None else contextlib.nullcontext()

    def _forward(self, prefix_layers, own_mask: torch.Tensor, **inputs):
        """One model call on the rows' own tokens, attending to the shared prefix when given."""
        if self.core_share is not None:
            self.core_share.rebalance()  # other instances may have started or finished meanwhile
        if prefix_layers is None:
            return self.model(attention_mask=own_mask, **inputs)
        return self.model(attention_mask=own_mask,
                          shared_prefix=SharedPrefix(prefix_layers, own_mask), **inputs)

    def _choose(self, logits: torch.Tensor, rows: list[_Row]) -> list[tuple[int, float]]:
        """Pick each row's next token with its own temperature/top-p/generator; with its logprob."""
        logits = logits.float().cpu()  # sampling runs on the CPU, with each row's CPU generator
        logprobs = torch.log_softmax(logits, dim=-1)
        temps = torch.tensor([max(r.temperature, 1e-6) for r in rows], device="cpu")[:, None]
        probs = torch.softmax(logits / temps, dim=-1)
        chosen: list[tuple[int, float]] = []
        for b, row in enumerate(rows):
            if row.temperature <= 0:
                token = int(torch.argmax(logits[b]))
            else:
                token = _sample_nucleus(probs[b], row.top_p, row.generator)
            chosen.append((token, float(logprobs[b, token])))
        return chosen

    def _append(self, row: _Row, choice: tuple[int, float]) -> bool:
        """Record a token; return True while the row should keep generating."""
        token, logprob = choice
        row.generated.append(token)
        row.logprob_sum += logprob
        if token in self.eos_ids:
            row.finish_reason = "eos"
            return False
        if row.stop:
            text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
            hits = [text.find(s) for s in row.stop]
            hits = [h for h in hits if h >= 0]
            if hits:
                row.stop_at = min(hits)
                row.finish_reason = "stop"
                return False
        if len(row.generated) >= row.max_new_tokens:
            row.finish_reason = "length"
            return False
        return True

    # ------------------------------------------------------------------ judge
    @torch.inference_mode()
    def judge(self, requests: list[JudgeRequest]) -> list[JudgeOutput]:
        """Probability of each choice per request (softmax over choice log-likelihoods)."""
        for request in requests:
            request.validate()
        prefixes = [self.format_prompt(r.prompt, r.chat, r.system) for r in requests]
        reasoning: list[str | None] = [None] * len(requests)
        cot = [i for i, r in enumerate(requests) if r.cot]
        if cot:
            generated = self.generate([
                # The templated prefix goes in as a response prefix: it is not user text and
                # keeps its control tokens.
                GenRequest(prompt="", response_prefix=prefixes[i], chat=False,
                           max_new_tokens=requests[i].cot_max_new_tokens,
                           temperature=requests[i].cot_temperature, top_p=1.0,
                           seed=requests[i].seed,
                           stop=tuple(requests[i].cot_stop))
                for i in cot
            ])
            for i, samples in zip(cot, generated):
                reasoning[i] = samples[0].text
                prefixes[i] = prefixes[i] + samples[0].text + requests[i].answer_prefix
        scores = self.score_continuations([(p, list(r.choices))
                                           for p, r in zip(prefixes, requests)])
        outputs = []
        for request, logps, why in zip(requests, scores, reasoning):
            probs = torch.softmax(torch.tensor(logps, dtype=torch.float64), dim=0).tolist()
            if request.cot:
                probs = clamp_probs(probs, *request.clamp)
            outputs.append(JudgeOutput(probs=probs, logprobs=logps, reasoning=why))
        return outputs

    @torch.inference_mode()
    def score_continuations(self, items: list[tuple[str, list[str]]]) -> list[list[float]]:
        """For each (prefix, choices): log P(choice text | prefix), tokenised jointly with the
        prefix.

        The part every choice shares runs once per item (one row per item); its KV cache is then
        copied to one row per choice and only the short choice tails run on top of it, so a
        two-choice judge costs one prompt forward, not two. The items' common opening (the
        judge's fixed instructions) comes from the prefix cache, as for generation.
        """
        heads: list[list[int]] = []  # per item: the tokens all its choices share
        tails: list[list[int]] = []  # per (item, choice): the scored tokens
        owners: list[tuple[int, int]] = []
        for item_index, (prefix, choices) in enumerate(items):
            prefix_ids = self.encode(prefix)
            joint = [self.encode(prefix + choice) for choice in choices]
            # The longest token prefix that the bare prompt and every prompt+choice share.
            shared = len(prefix_ids)
            for ids in joint:
                common = 0
                for a, b in zip(prefix_ids, ids):
                    if a != b:
                        break
                    common += 1
                shared = min(shared, common)
            shared = max(shared, 1)  # the first token has no prediction; keep it as context
            for choice_index, ids in enumerate(joint):
                if len(ids) > self.max_context:
                    raise RequestError(f"prompt + choice has {len(ids)} tokens, more than the "
                                       f"model's context of {self.max_context}; shorten the prompt")
                tails.append(ids[shared:])
                owners.append((item_index, choice_index))
            heads.append(joint[0][:shared])
        results = [[0.0] * len(choices) for _, choices in items]
        if not tails:
            return results
        # Phase 1: the shared heads, one row per item, on top of their common cached prefix.
        cache, prefix, head_mask, first, _ = self.prefill(heads)
        first = torch.log_softmax(first.float(), dim=-1)  # predicts each item's first tail token
        rows = torch.tensor([item for item, _ in owners])
        for (item_index, choice_index), tail in zip(owners, tails):
            if tail:
                results[item_index][choice_index] = float(first[item_index, tail[0]])
        longest = max(len(t) for t in tails)
        if longest < 2:
            return results
        # Phase 2: one row per choice on a copy of its item's cache; tails right-padded.
        cache.batch_select_indices(rows)
        tail_ids = torch.full((len(tails), longest - 1), self.pad_id, dtype=torch.long)
        tail_mask = torch.zeros_like(tail_ids)
        for i, tail in enumerate(tails):
            if len(tail) > 1:
                tail_ids[i, : len(tail) - 1] = torch.tensor(tail[:-1])
                tail_mask[i, : len(tail) - 1] = 1
        starts = torch.tensor([len(heads[item]) for item, _ in owners])[:, None]
        logits = self._forward(prefix, torch.cat([head_mask[rows], tail_mask], 1),
                               input_ids=tail_ids,
                               position_ids=starts + torch.arange(longest - 1)[None, :],
                               past_key_values=cache, use_cache=True).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        for i, ((item_index, choice_index), tail) in enumerate(zip(owners, tails)):
            for j in range(1, len(tail)):
                results[item_index][choice_index] += float(logprobs[i, j - 1, tail[j]])
        return results


def clamp_probs(probs: list[float], low: float, high: float) -> list[float]:
    """Clamp each probability into [low, high] and renormalise (exact for two choices when
    low+high=1)."""
    clamped = [min(max(p, low), high) for p in probs]
    total = sum(clamped)
    return [p / total for p in clamped]


def sequence_logprob(model, prompt_ids: list[int], completion_ids: list[int]) -> float:
    """Sum of log P(completion | prompt) from one plain forward pass (a reference for tests)."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits.float()[0]
    logprobs = torch.log_softmax(logits, dim=-1)
    start = len(prompt_ids)
    return float(sum(logprobs[start - 1 + k, t] for k, t in enumerate(completion_ids)))


__all__ = ["TextGenerator", "clamp_probs", "sequence_logprob"]
