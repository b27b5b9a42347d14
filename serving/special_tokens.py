"""Keep text from users and models from reaching a tokenizer as its special tokens.

A prompt that contains ``<|im_start|>system ...`` or ``<|im_end|>`` would otherwise be
tokenised as the chat template's own control tokens: a user could open a system turn, close
their own turn or end the text. ``neutralise`` breaks every special token's spelling inside
untrusted text with a WORD JOINER (U+2060) after its first character, so the text reads the
same but tokenises as ordinary characters. The engine (``serving/textgen.py``) applies it to
prompts and system prompts before templating, the trainer (``trainer/data.py``) to prompts and
answers, so serving and training see the same tokens.
"""

from __future__ import annotations

import re

JOINER = "\u2060"
_CACHE_ATTR = "_cai_special_pattern"


def special_strings(tokenizer) -> list[str]:
    """The spellings the tokenizer turns into special tokens (longest first)."""
    found = set(getattr(tokenizer, "all_special_tokens", None) or ())
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for token in decoder.values():
        if getattr(token, "special", False):
            found.add(str(token))
    return sorted((s for s in found if len(s) > 1), key=len, reverse=True)


def _pattern(tokenizer) -> re.Pattern | None:
    pattern = getattr(tokenizer, _CACHE_ATTR, False)
    if pattern is False:
        strings = special_strings(tokenizer)
        pattern = re.compile("|".join(map(re.escape, strings))) if strings else None
        try:
            setattr(tokenizer, _CACHE_ATTR, pattern)
        except AttributeError:  # a tokenizer that takes no attributes: compute each time
            pass
    return pattern


def neutralise(text: str, tokenizer) -> str:
    """``text`` with every special token's spelling broken (a WORD JOINER after its first
    character); text without them comes back unchanged."""
    pattern = _pattern(tokenizer)
    if pattern is None or not text:
        return text
    return pattern.sub(lambda m: m.group(0)[0] + JOINER + m.group(0)[1:], text)
