"""The constitution: critique/revision principles, comparison principles and few-shot examples.

Two formats load into the same validated model:

* the project's YAML (``agents/default_constitution.yaml`` is the default), and
* the JSON files published with the Constitutional AI paper (a folder holding
  ``CritiqueRevisionInstructions.json``, ``CritiqueRevisionFewShotPrompts.json`` and optionally
  ``RLMadisonInstructions.json`` / ``RLMadisonFewShotPrompts.json``), so experiments can swap in
  the paper's wording without editing code.

Principle draws are seeded from (prompt id, sample, round, seed), so a replayed message gets the
same principle and the draw is recorded on every record.
"""

from __future__ import annotations

import json
import random
import re
from functools import cached_property
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_PATH = Path(__file__).with_name("default_constitution.yaml")

# System prompts for the "context" and "contrastive" strategies (agents/strategies.py), used when
# a constitution does not set its own (the paper's JSON format has none).
DEFAULT_SYSTEM_PROMPT = (
    "You are a careful and helpful assistant. If a request could hurt someone or help break the "
    "law, decline it, say in one sentence why, and offer a safe alternative if there is one. "
    "If the request is harmless, answer it fully and directly, without needless warnings.")
DEFAULT_REMINDER = (
    "If this request could hurt someone or is illegal, say you can't help with it and explain why. "
    "Otherwise answer it.")
DEFAULT_DECLINE_OPENING = "I can't help with that. Doing this could"
DEFAULT_CONTRAST_PROMPT = (
    "Reply tersely and get straight to the point. Never explain yourself, and never give reasons "
    "or offer alternatives.")


class ConstitutionError(ValueError):
    """The constitution file is unusable; the message lists each bad field and how to fix it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class CritiquePrinciple(_Strict):
    id: str = Field(pattern=_ID, description="short stable name, recorded on every record")
    critique: str = Field(min_length=1, description="the CritiqueRequest text")
    revision: str = Field(min_length=1, description="the matching RevisionRequest text")


class ComparisonPrinciple(_Strict):
    id: str = Field(pattern=_ID)
    text: str = Field(min_length=1, description="the question put to the judge before the options")


class Turn(_Strict):
    human: str
    assistant: str


class CritiqueExample(_Strict):
    prompt: str = Field(min_length=1)
    response: str = Field(min_length=1)
    critique: str = Field(min_length=1)
    revision: str = Field(min_length=1)
    principle: str | None = Field(None, description="id of a critique_revision principle")
    critique_request: str | None = Field(None, description="literal request text (paper format)")
    revision_request: str | None = None
    history: list[Turn] = Field(default_factory=list, description="earlier turns, oldest first")


class ComparisonExample(_Strict):
    prompt: str = Field(min_length=1)
    better: str = Field(min_length=1)
    worse: str = Field(min_length=1)
    principle: str | None = None


class FewShot(_Strict):
    critique_revision: list[CritiqueExample] = Field(default_factory=list)
    comparison: list[ComparisonExample] = Field(default_factory=list)


class Constitution(_Strict):
    name: str = Field(min_length=1)
    version: str = Field(min_length=1, description="recorded on every record; bump it on any edit")
    description: str = ""
    critique_revision: list[CritiquePrinciple] = Field(min_length=1)
    comparison: list[ComparisonPrinciple] = Field(min_length=1)
    few_shot: FewShot = Field(default_factory=FewShot)
    system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, min_length=1, description=(
        "the constitution in a few sentences, given as system context by the 'context' revision "
        "strategy and as the 'toward' prompt of 'contrastive' preferences"))
    reminder: str = Field(DEFAULT_REMINDER, min_length=1, description=(
        "the constitution in one sentence, appended to the user's turn instead of a system prompt "
        "when context_placement='user-suffix' (small models heed it more there)"))
    contrast_prompt: str = Field(DEFAULT_CONTRAST_PROMPT, min_length=1, description=(
        "the 'away' system prompt of 'contrastive' preferences: a careless, unexplained style; it "
        "must never ask for harmful content"))
    decline_opening: str = Field(DEFAULT_DECLINE_OPENING, min_length=1, description=(
        "with context_opening=true, context answers to red-team prompts (and the 'toward' side of "
        "contrastive pairs on them) start with this text and the policy completes it: a decline "
        "whose reason the model writes itself. End it where the reason begins"))

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value):
        # YAML reads 1.0 as a float; accept it but keep the version a string.
        return str(value) if isinstance(value, (int, float)) else value

    @model_validator(mode="after")
    def _references(self) -> Constitution:
        for kind in ("critique_revision", "comparison"):
            ids = [p.id for p in getattr(self, kind)]
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"{kind}: duplicate principle id(s) {dupes}; give each principle "
                                 "a unique id")
        critique_ids = {p.id for p in self.critique_revision}
        for i, ex in enumerate(self.few_shot.critique_revision):
            if ex.principle is None and (ex.critique_request is None
                                         or ex.revision_request is None):
                raise ValueError(f"few_shot.critique_revision.{i}: set 'principle' (an id) or both "
                                 "'critique_request' and 'revision_request'")
            if ex.principle is not None and ex.principle not in critique_ids:
                raise ValueError(f"few_shot.critique_revision.{i}.principle: {ex.principle!r} is "
                                 f"not a critique_revision id; use one of {sorted(critique_ids)}")
        comparison_ids = {p.id for p in self.comparison}
        for i, ex in enumerate(self.few_shot.comparison):
            if ex.principle is not None and ex.principle not in comparison_ids:
                raise ValueError(f"few_shot.comparison.{i}.principle: {ex.principle!r} is not a "
                                 f"comparison id; use one of {sorted(comparison_ids)}")
        return self

    # ---- lookups and seeded draws ------------------------------------------------------------

    @cached_property
    def critique_by_id(self) -> dict[str, CritiquePrinciple]:
        return {p.id: p for p in self.critique_revision}

    @cached_property
    def comparison_by_id(self) -> dict[str, ComparisonPrinciple]:
        return {p.id: p for p in self.comparison}

    def example_requests(self, example: CritiqueExample) -> tuple[str, str]:
        """The (critique request, revision request) texts an example shows."""
        if example.principle is not None:
            p = self.critique_by_id[example.principle]
            return (example.critique_request or p.critique, example.revision_request or p.revision)
        return example.critique_request or "", example.revision_request or ""

    def draw_critique(self, prompt_id: str, round_: int, seed: int,
                      sample: int = 0) -> CritiquePrinciple:
        """Principle for critique round ``round_`` (1-based) of one chain.

        The chain's principles are a seeded shuffle, so rounds use different principles until
        the list is exhausted, and a replay draws exactly the same one.
        """
        if round_ < 1:
            raise ValueError(f"round must be >= 1, got {round_}")
        order = list(self.critique_revision)
        random.Random(f"critique|{prompt_id}|{sample}|{seed}").shuffle(order)
        return order[(round_ - 1) % len(order)]

    def draw_comparisons(self, prompt_id: str, pair_index: int, seed: int,
                         count: int = 1) -> list[ComparisonPrinciple]:
        """``count`` distinct comparison principles for one pair (seeded, reproducible)."""
        count = max(1, min(count, len(self.comparison)))
        rng = random.Random(f"compare|{prompt_id}|{pair_index}|{seed}")
        return rng.sample(list(self.comparison), count)


def _explain(exc: ValidationError, source: str) -> ConstitutionError:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        fix = {
            "missing": "add this field",
            "extra_forbidden": "remove it or check its spelling",
            "string_too_short": "give it a non-empty value",
            "too_short": "add at least one entry",
            "string_pattern_mismatch": "use letters, digits, '.', '_' or '-' only",
        }.get(err["type"], "")
        lines.append(f"  {where}: {err['msg']}" + (f" (fix: {fix})" if fix else ""))
    return ConstitutionError(f"invalid constitution {source}:\n" + "\n".join(lines))


def from_dict(data: object, source: str = "<data>") -> Constitution:
    if not isinstance(data, dict):
        raise ConstitutionError(f"invalid constitution {source}: expected a mapping with name, "
                                "version, critique_revision and comparison, got "
                                f"{type(data).__name__}")
    try:
        return Constitution.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, source) from None


def load(path: str | Path | None = None) -> Constitution:
    """Load a YAML constitution, or the paper's JSON format when ``path`` is a folder."""
    path = Path(path) if path is not None else DEFAULT_PATH
    if path.is_dir():
        return load_paper_format(path)
    if not path.exists():
        raise ConstitutionError(f"constitution file {path} does not exist; pass a YAML file or a "
                                "folder holding the paper's CritiqueRevisionInstructions.json")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConstitutionError(f"constitution {path} is not valid YAML: {exc}") from None
    return from_dict(data, str(path))


# ---- the paper's published JSON format -----------------------------------------------------------

_MARKERS = ("Human", "Assistant", "CritiqueRequest", "Critique", "RevisionRequest", "Revision")
_SPLIT = re.compile(r"\n\n(" + "|".join(_MARKERS) + r"):")


def _strip_marker(text: str, marker: str) -> str:
    text = text.strip()
    if text.startswith(marker + ":"):
        text = text[len(marker) + 1:]
    return text.strip()


def _request_text(text: str, request: str, answer: str) -> str:
    """'\\n\\nCritiqueRequest: X\\n\\nCritique:' -> 'X'."""
    text = text.strip()
    if text.endswith(answer + ":"):
        text = text[: -len(answer) - 1]
    return _strip_marker(text, request)


def _parse_dialogue(text: str, source: str, index: int) -> CritiqueExample:
    parts = _SPLIT.split("\n\n" + text.strip("\n") if not text.startswith("\n\n") else text)
    # parts = [prefix, marker, body, marker, body, ...]
    pairs = [(parts[i], parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]
    turns: list[tuple[str, str]] = []
    fields: dict[str, str] = {}
    for marker, body in pairs:
        if marker in ("Human", "Assistant") and not fields:
            turns.append((marker, body))
        elif marker in ("CritiqueRequest", "Critique", "RevisionRequest", "Revision"):
            fields[marker] = body
    # the trailing empty "Human:" that ends each paper example is dropped
    while turns and turns[-1][0] == "Human" and not turns[-1][1]:
        turns.pop()
    if len(turns) < 2 or turns[-1][0] != "Assistant" or turns[-2][0] != "Human" or len(fields) < 4:
        raise ConstitutionError(
            f"{source}[{index}]: expected 'Human: ... Assistant: ... CritiqueRequest: ... "
            "Critique: ... RevisionRequest: ... Revision: ...'; check the example's markers")
    history = []
    earlier = turns[:-2]
    for i in range(0, len(earlier) - 1, 2):
        history.append(Turn(human=earlier[i][1], assistant=earlier[i + 1][1]))
    return CritiqueExample(
        prompt=turns[-2][1], response=turns[-1][1], history=history,
        critique_request=fields["CritiqueRequest"], critique=fields["Critique"],
        revision_request=fields["RevisionRequest"], revision=fields["Revision"],
    )


def load_paper_format(folder: str | Path, version: str = "bai2022") -> Constitution:
    """Read the paper's JSON prompt files from ``folder`` into a Constitution."""
    folder = Path(folder)
    instructions_file = folder / "CritiqueRevisionInstructions.json"
    if not instructions_file.exists():
        raise ConstitutionError(f"{folder} holds no CritiqueRevisionInstructions.json; point at "
                                "the folder with the paper's prompt files")
    instructions = json.loads(instructions_file.read_text(encoding="utf-8"))
    if not isinstance(instructions, dict):
        raise ConstitutionError(f"{instructions_file}: expected an object of {{id: {{prompt, "
                                "edit_request}}")
    principles = []
    for key, entry in instructions.items():
        try:
            prompt = entry["prompt"][0] if isinstance(entry["prompt"], list) else entry["prompt"]
            principles.append({
                "id": key,
                "critique": _request_text(prompt, "CritiqueRequest", "Critique"),
                "revision": _request_text(entry["edit_request"], "RevisionRequest", "Revision"),
            })
        except (KeyError, IndexError, TypeError) as exc:
            raise ConstitutionError(f"{instructions_file}: entry {key!r} needs 'prompt' (list of "
                                    f"text) and 'edit_request' (text): {exc!r}") from None

    examples = []
    few_shot_file = folder / "CritiqueRevisionFewShotPrompts.json"
    if few_shot_file.exists():
        for i, text in enumerate(json.loads(few_shot_file.read_text(encoding="utf-8"))):
            examples.append(_parse_dialogue(text, few_shot_file.name, i).model_dump())

    comparison = []
    cmp_file = folder / "RLMadisonInstructions.json"
    if cmp_file.exists():
        for i, text in enumerate(json.loads(cmp_file.read_text(encoding="utf-8"))):
            text = text.strip()
            if text.endswith("Options:"):
                text = text[: -len("Options:")].strip()
            comparison.append({"id": f"comparison{i}", "text": text})
    if not comparison:  # the critique instructions alone still make a usable constitution
        comparison = [{"id": "comparison0", "text": "Which response is less harmful?"}]

    cmp_examples = []
    cmp_few_shot = folder / "RLMadisonFewShotPrompts.json"
    if cmp_few_shot.exists():
        for entry in json.loads(cmp_few_shot.read_text(encoding="utf-8")):
            human = _strip_marker(entry["prompt"].strip().removesuffix("Assistant:"), "Human")
            for good, bad in zip(entry.get("corrects", []), entry.get("incorrects", [])):
                cmp_examples.append({"prompt": human, "better": good, "worse": bad})

    return from_dict({
        "name": "cai-paper", "version": version,
        "description": f"Loaded from the paper's published prompt files in {folder.name}",
        "critique_revision": principles, "comparison": comparison,
        "few_shot": {"critique_revision": examples, "comparison": cmp_examples},
    }, str(folder))
