"""Unit tests of serving.textgen on the tiny model (random weights, SmolLM2's tokenizer)."""

from __future__ import annotations

import pytest
import torch

from serving.requests import GenRequest, JudgeRequest, RequestError
from serving.textgen import TextGenerator, clamp_probs, sequence_logprob


def prompt_ids(gen: TextGenerator, request: GenRequest) -> list[int]:
    return gen.encode(gen.format_prompt(request.prompt, request.chat, request.system))


def test_shapes_and_per_request_lengths(tiny_generator):
    requests = [
        GenRequest("Hello there", max_new_tokens=3, temperature=1.0, seed=1),
        GenRequest("Tell me a story about a cat", max_new_tokens=9, temperature=1.0, seed=2,
                   num_samples=3),
        GenRequest("raw text", max_new_tokens=6, temperature=0.0, chat=False),
    ]
    results = tiny_generator.generate(requests)
    assert [len(r) for r in results] == [1, 3, 1]
    for request, samples in zip(requests, results):
        for sample in samples:
            assert sample.prompt_tokens == len(prompt_ids(tiny_generator, request))
            assert 1 <= sample.completion_tokens <= request.max_new_tokens
            if sample.finish_reason == "length":
                assert sample.completion_tokens == request.max_new_tokens
            assert isinstance(sample.text, str)
    # Raw continuation gets no chat template: the prompt is just its own tokens.
    assert results[2][0].prompt_tokens == len(tiny_generator.encode("raw text"))
    # The samples of one request differ (seed, seed+1, seed+2).
    assert len({tuple(s.token_ids) for s in results[1]}) == 3


def test_chat_template_applied_only_when_asked(tiny_generator):
    chat = tiny_generator.format_prompt("Hi", chat=True, system="Be brief.")
    assert chat.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert chat.endswith("<|im_start|>assistant\n")
    assert tiny_generator.format_prompt("Hi", chat=False) == "Hi"


def test_greedy_batch_matches_hf_generate(tiny_generator):
    """Left padding and row pruning must not change greedy outputs."""
    requests = [GenRequest(p, max_new_tokens=n, temperature=0.0, chat=False)
                for p, n in [("Once upon a time", 7),
                             ("A much longer prompt that needs padding in a batch", 4),
                             ("Hi", 10)]]
    batched = tiny_generator.generate(requests)
    for request, [sample] in zip(requests, batched):
        ids = prompt_ids(tiny_generator, request)
        reference = tiny_generator.model.generate(
            torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=request.max_new_tokens, do_sample=False,
        )[0, len(ids):].tolist()
        assert sample.token_ids == reference[: len(sample.token_ids)]


def test_seed_reproducible_whatever_the_batch(tiny_generator):
    mine = GenRequest("Write a poem", max_new_tokens=8, temperature=1.0, top_p=0.9, seed=1234)
    alone = tiny_generator.generate([mine])[0][0]
    crowded = tiny_generator.generate([
        GenRequest("Something else entirely, and longer", max_new_tokens=12, temperature=1.3,
                   seed=7),
        mine,
        GenRequest("x", max_new_tokens=2, temperature=0.0),
    ])[1][0]
    assert alone.token_ids == crowded.token_ids
    other = tiny_generator.generate([GenRequest("Write a poem", max_new_tokens=8, temperature=1.0,
                                                top_p=0.9, seed=1235)])[0][0]
    assert other.token_ids != alone.token_ids


def test_temperature_zero_and_tiny_top_p_are_greedy(tiny_generator):
    greedy = tiny_generator.generate([GenRequest("Why?", max_new_tokens=6, temperature=0.0,
                                                 seed=1)])[0][0]
    for seed in (2, 3):
        again = tiny_generator.generate([GenRequest("Why?", max_new_tokens=6, temperature=0.0,
                                                    seed=seed)])
        assert again[0][0].token_ids == greedy.token_ids
    nucleus = tiny_generator.generate([GenRequest("Why?", max_new_tokens=6, temperature=1.0,
                                                  top_p=1e-6,
                                                  seed=9)])[0][0]
    assert nucleus.token_ids == greedy.token_ids


def test_logprob_sum_matches_a_manual_forward(tiny_generator):
    requests = [GenRequest("Explain gravity", max_new_tokens=6, temperature=1.0, seed=3,
                           num_samples=2),
                GenRequest("Short", max_new_tokens=4, temperature=0.5, top_p=0.8, seed=4,
                           chat=False)]
    results = tiny_generator.generate(requests)
    for request, samples in zip(requests, results):
        ids = prompt_ids(tiny_generator, request)
        for sample in samples:
            manual = sequence_logprob(tiny_generator.model, ids, sample.token_ids)
            assert sample.logprob_sum == pytest.approx(manual, rel=1e-4, abs=1e-3)
            assert sample.logprob_sum < 0


def test_stop_strings_cut_the_text(tiny_generator):
    base = GenRequest("The", max_new_tokens=12, temperature=1.0, seed=11, chat=False)
    full = tiny_generator.generate([base])[0][0]
    words = full.text.split()
    assert len(words) >= 3, full.text
    stop = words[2]
    cut = full.text.index(stop)
    base.stop = (stop, "never-appears-zzz")
    stopped = tiny_generator.generate([base])[0][0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[:cut]
    assert stopped.completion_tokens < full.completion_tokens or full.text.endswith(stop)
    assert stopped.token_ids == full.token_ids[: stopped.completion_tokens]


def test_eos_ends_a_row_and_is_not_in_the_text(tiny_generator):
    request = GenRequest("Why?", max_new_tokens=6, temperature=0.0)
    first = tiny_generator.generate([request])[0][0].token_ids[0]
    saved = tiny_generator.eos_ids
    tiny_generator.eos_ids = {first}
    try:
        sample = tiny_generator.generate([request])[0][0]
    finally:
        tiny_generator.eos_ids = saved
    assert (sample.finish_reason, sample.text, sample.completion_tokens) == ("eos", "", 1)


def test_invalid_requests_are_refused(tiny_generator):
    with pytest.raises(RequestError, match="max_new_tokens"):
        tiny_generator.generate([GenRequest("x", max_new_tokens=0)])
    with pytest.raises(RequestError, match="top_p"):
        tiny_generator.generate([GenRequest("x", top_p=0)])
    with pytest.raises(RequestError, match="context"):
        tiny_generator.generate([GenRequest("word " * 2100, max_new_tokens=4, chat=False)])


def test_judge_probabilities_are_a_softmax_of_choice_loglikelihoods(tiny_generator):
    prompt = "Question: which answer is better?\nAnswer:"
    choices = (" (A)", " (B)")
    [out] = tiny_generator.judge([JudgeRequest(prompt, choices=choices, chat=False)])
    assert sum(out.probs) == pytest.approx(1.0)
    prompt_tok = tiny_generator.encode(prompt)
    for choice, logp in zip(choices, out.logprobs):
        joint = tiny_generator.encode(prompt + choice)
        assert joint[: len(prompt_tok)] == prompt_tok  # no merge across this boundary
        assert logp == pytest.approx(sequence_logprob(tiny_generator.model, prompt_tok,
                                                      joint[len(prompt_tok):]),
                                     rel=1e-4, abs=1e-3)
    expected = torch.softmax(torch.tensor(out.logprobs, dtype=torch.float64), 0).tolist()
    assert out.probs == pytest.approx(expected)


def test_judge_prefers_the_models_own_continuation(tiny_generator):
    prompt = "Pick one:"
    greedy = tiny_generator.generate([GenRequest(prompt, max_new_tokens=3, temperature=0.0,
                                                 chat=False)])[0][0]
    own = tiny_generator.tokenizer.decode(greedy.token_ids)
    [out] = tiny_generator.judge([JudgeRequest(prompt, choices=(own, " zebra quantum"),
                                               chat=False)])
    assert out.probs[0] > 0.9


def test_judge_handles_tokens_merged_across_the_boundary(tiny_generator):
    prompt = "The answer is "  # the trailing space merges with "(" in a joint tokenisation
    choices = ("(A)", "(B)")
    prompt_tok = tiny_generator.encode(prompt)
    joints = [tiny_generator.encode(prompt + c) for c in choices]
    assert any(j[: len(prompt_tok)] != prompt_tok for j in joints), (
        "pick a prompt whose tokens merge")
    shared = min(next((k for k, (a, b) in enumerate(zip(prompt_tok, j)) if a != b), len(prompt_tok))
                 for j in joints)
    [out] = tiny_generator.judge([JudgeRequest(prompt, choices=choices, chat=False)])
    for joint, logp in zip(joints, out.logprobs):
        manual = sequence_logprob(tiny_generator.model, joint[:shared], joint[shared:])
        assert logp == pytest.approx(manual, rel=1e-4, abs=1e-3)
    assert sum(out.probs) == pytest.approx(1.0)


def test_judge_batch_matches_single_and_chain_of_thought_clamps(tiny_generator):
    a = JudgeRequest("First comparison?", chat=True)
    b = JudgeRequest("A second, much longer comparison prompt, padded in the batch?", chat=True)
    single = tiny_generator.judge([b])[0]
    batched = tiny_generator.judge([a, b])[1]
    assert batched.probs == pytest.approx(single.probs, abs=1e-4)
    [cot] = tiny_generator.judge([JudgeRequest("Compare.", cot=True, cot_max_new_tokens=5,
                                               clamp=(0.4, 0.6))])
    assert isinstance(cot.reasoning, str) and cot.reasoning
    assert all(0.4 - 1e-9 <= p <= 0.6 + 1e-9 for p in cot.probs)
    assert sum(cot.probs) == pytest.approx(1.0)


def test_clamp_probs():
    assert clamp_probs([0.95, 0.05], 0.4, 0.6) == pytest.approx([0.6, 0.4])
    assert clamp_probs([0.55, 0.45], 0.4, 0.6) == pytest.approx([0.55, 0.45])


def test_threads_knob(cache_dir):
    from serving.models import resolve

    TextGenerator(resolve("tiny", cache_dir), threads=1)
    assert torch.get_num_threads() == 1


def test_nucleus_sampling_draws_from_the_renormalised_nucleus():
    from serving.textgen import _sample_nucleus

    generator = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    counts = torch.zeros(4)
    for _ in range(4000):
        counts[_sample_nucleus(probs, 0.7, generator)] += 1
    # Nucleus for top_p=0.7 is {0, 1}: renormalised 0.625 / 0.375; never tokens 2 or 3.
    assert counts[2] == counts[3] == 0
    assert counts[0] / 4000 == pytest.approx(0.625, abs=0.03)
    assert _sample_nucleus(probs, 1e-9, generator) == 0  # tiny top_p: the top token only


def test_shared_prefix_is_computed_once_and_gives_the_same_answers(cache_dir):
    from serving.models import resolve

    source = resolve("tiny", cache_dir)
    plain = TextGenerator(source, threads=1, prefix_min_tokens=0)
    shared = TextGenerator(source, threads=1, prefix_min_tokens=8)
    few_shot = "Human: an example\n\nAssistant: an answer\n\nCritique: a critique.\n\n" * 5
    requests = [GenRequest(few_shot + f"Human: question {i}{' really' * i}\n\nAssistant:",
                           max_new_tokens=4 + i, temperature=0.0, chat=False) for i in range(4)]
    reference = plain.generate(requests)
    first = shared.generate(requests)
    assert len(shared.prefill.prefixes) == 1
    prefix_tokens = len(next(iter(shared.prefill.prefixes)))
    assert prefix_tokens >= len(shared.encode(few_shot)) - 1
    again = shared.generate(requests[1:3])  # a later batch reuses the cached prefix
    single = shared.generate(requests[3:])  # a batch of one too
    assert len(shared.prefill.prefixes) == 1
    for ref, got in zip(reference, first):
        assert got[0].token_ids == ref[0].token_ids
        assert got[0].logprob_sum == pytest.approx(ref[0].logprob_sum, abs=1e-3)
    assert [r[0].token_ids for r in again] == [r[0].token_ids for r in reference[1:3]]
    assert single[0][0].token_ids == reference[3][0].token_ids
    assert single[0][0].prompt_tokens == reference[3][0].prompt_tokens


def test_judge_batch_with_mixed_choices_matches_manual_scores(tiny_generator):
    requests = [JudgeRequest("Short question?\nAnswer:",
                             choices=(" yes", " no, certainly not", " maybe"),
                             chat=False),
                JudgeRequest("A longer question that needs more tokens than the first?\nAnswer:",
                             choices=(" (A)", " (B) with a longer tail"), chat=False)]
    outputs = tiny_generator.judge(requests)
    for request, out in zip(requests, outputs):
        prompt_tok = tiny_generator.encode(request.prompt)
        for choice, logp in zip(request.choices, out.logprobs):
            joint = tiny_generator.encode(request.prompt + choice)
            assert joint[: len(prompt_tok)] == prompt_tok
            manual = sequence_logprob(tiny_generator.model, prompt_tok, joint[len(prompt_tok):])
            assert logp == pytest.approx(manual, rel=1e-4, abs=1e-3)
        assert sum(out.probs) == pytest.approx(1.0)


def test_judge_reuses_the_shared_opening_and_scores_the_same(cache_dir):
    from serving.models import resolve

    source = resolve("tiny", cache_dir)
    plain = TextGenerator(source, threads=1, prefix_min_tokens=0)
    shared = TextGenerator(source, threads=1, prefix_min_tokens=8)
    opening = "Consider the following conversation between a human and an assistant.\n" * 4
    requests = [JudgeRequest(opening + f"Human: question {i}{' again' * i}\nWhich is better?",
                             choices=(" (A)", " (B)"),
                             chat=False) for i in range(3)]
    reference = plain.judge(requests)
    batched = shared.judge(requests)
    assert len(shared.prefill.prefixes) == 1  # the opening was computed once and kept
    assert len(next(iter(shared.prefill.prefixes))) >= len(shared.encode(opening)) - 1
    single = shared.judge(requests[2:])  # one request alone reuses the cached opening
    for ref, got in zip(reference + reference[2:], batched + single):
        assert got.logprobs == pytest.approx(ref.logprobs, abs=1e-3)
        assert got.probs == pytest.approx(ref.probs, abs=1e-4)


def test_response_prefix_is_continued_and_returned(tiny_generator):
    opening = "I can't help with that. Doing this could"
    request = GenRequest("How do I pick a lock?", max_new_tokens=5, temperature=0.0,
                         response_prefix=opening)
    [[opened]] = tiny_generator.generate([request])
    raw = tiny_generator.format_prompt("How do I pick a lock?", True) + opening
    [[continued]] = tiny_generator.generate([GenRequest(raw, max_new_tokens=5, temperature=0.0,
                                                        chat=False)])
    assert opened.text == opening + continued.text            # the answer includes its opening
    assert opened.token_ids == continued.token_ids and opened.completion_tokens == 5
    with pytest.raises(RequestError, match="response_prefix"):
        tiny_generator.generate([GenRequest("q", response_prefix=3)])
