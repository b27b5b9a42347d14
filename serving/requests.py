"""Request and response types of text generation, judging and reward scoring, free of torch.

Two sets of types, all plain dataclasses:

* the engine's (``serving/textgen.py``, ``serving/reward_model.py``) and the Triton wire
  format's (``serving/protocol.py``): ``GenRequest`` / ``GenResult`` for one prompt to complete,
  ``JudgeRequest`` / ``JudgeOutput`` for a multiple-choice judgement, ``ScoreRequest`` for the
  reward of one (prompt, answer) pair, ``RequestError`` for a bad parameter;
* the ``Inference`` interface's (``serving/inference.py``), which the agents, the trainer and
  the strategy grid call: ``GenerationParams`` (sampling knobs of one call), ``Generation``,
  ``JudgeResult`` and ``ScoreResult`` (answers carrying the model version that produced them).

The Faust worker builds requests and reads answers through these types only, so it never
imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class RequestError(ValueError):
    """A request is invalid (bad parameter, prompt too long); the message names the field."""


@dataclass
class GenRequest:
    """One prompt to complete; ``num_samples`` completions are drawn from it."""

    prompt: str
    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int | None = None
    stop: tuple[str, ...] = ()
    num_samples: int = 1
    chat: bool = True
    system: str | None = None
    # Text the answer starts with (the model continues it); it is part of the returned text.
    response_prefix: str = ""

    def validate(self) -> None:
        if not isinstance(self.prompt, str):
            raise RequestError(f"prompt must be a string, got {type(self.prompt).__name__}")
        if not isinstance(self.response_prefix, str):
            raise RequestError("response_prefix must be a string, got "
                               f"{type(self.response_prefix).__name__}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise RequestError("max_new_tokens must be an integer >= 1, got "
                               f"{self.max_new_tokens!r}")
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise RequestError(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise RequestError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise RequestError(f"num_samples must be an integer >= 1, got {self.num_samples!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise RequestError(f"seed must be an integer or null, got {self.seed!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise RequestError(f"stop must be a list of non-empty strings, got {list(self.stop)!r}")


@dataclass
class GenResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    logprob_sum: float
    token_ids: list[int] = field(default_factory=list, repr=False)
    finish_reason: str = "length"  # "eos" | "stop" | "length"


@dataclass
class JudgeRequest:
    """Which of ``choices`` best continues ``prompt``; optional chain-of-thought first."""

    prompt: str
    choices: tuple[str, ...] = ("(A)", "(B)")
    cot: bool = False
    chat: bool = True
    system: str | None = None
    cot_max_new_tokens: int = 128
    cot_temperature: float = 0.0
    cot_stop: tuple[str, ...] = ()
    answer_prefix: str = "\nTherefore, the answer is "
    clamp: tuple[float, float] = (0.4, 0.6)
    seed: int | None = None

    def validate(self) -> None:
        if not isinstance(self.prompt, str):
            raise RequestError(f"prompt must be a string, got {type(self.prompt).__name__}")
        if len(self.choices) < 2 or any(not isinstance(c, str) or not c for c in self.choices):
            raise RequestError(f"choices must be >= 2 non-empty strings, got "
                               f"{list(self.choices)!r}")
        lo, hi = self.clamp
        if not 0 <= lo < hi <= 1:
            raise RequestError("clamp must be (low, high) with 0 <= low < high <= 1, got "
                               f"{self.clamp!r}")
        if not isinstance(self.cot_max_new_tokens, int) or self.cot_max_new_tokens < 1:
            raise RequestError(f"cot_max_new_tokens must be >= 1, got {self.cot_max_new_tokens!r}")


@dataclass
class ScoreRequest:
    """The reward of ``answer`` to ``prompt`` (the reward role); the conversation is cut from
    the left to ``max_length`` tokens."""

    prompt: str
    answer: str
    max_length: int = 512

    def validate(self) -> None:
        if not isinstance(self.prompt, str):
            raise RequestError(f"prompt must be a string, got {type(self.prompt).__name__}")
        if not isinstance(self.answer, str):
            raise RequestError(f"answer must be a string, got {type(self.answer).__name__}")
        if (not isinstance(self.max_length, int) or isinstance(self.max_length, bool)
                or self.max_length < 1):
            raise RequestError(f"max_length must be an integer >= 1, got {self.max_length!r}")


@dataclass
class JudgeOutput:
    probs: list[float]
    logprobs: list[float]  # per-choice log-likelihood before normalisation
    reasoning: str | None = None


@dataclass(frozen=True)
class GenerationParams:
    """Sampling knobs of one generate call; ``chat=False`` means raw text continuation."""

    max_new_tokens: int = 128
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 0.95
    seed: int | None = None  # per prompt: prompt k of a call uses seed + k * num_samples
    stop: tuple[str, ...] = ()
    num_samples: int = 1
    chat: bool = True
    system: str | None = None
    response_prefix: str = ""  # the answer starts with this text; the model continues it


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    model_version: int
    logprob_sum: float | None = None
    finish_reason: str = "length"


@dataclass
class JudgeResult:
    probs: list[float]
    model_version: int
    reasoning: str | None = None
    logprobs: list[float] = field(default_factory=list)


@dataclass
class ScoreResult:
    reward: float
    model_version: int
