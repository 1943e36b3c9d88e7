"""The constraint checks on LLM answers (QZhou's synthesis rules), with their definitions in one place.

Length: CJK characters (Han, kana, Hangul) count one each, every other run of letters/digits counts as one word,
so "length" is words for English, characters for Chinese, and a sum of both for mixed text. A tolerance of 15%
allows |new - original| <= max(1, 0.15 * original): at least one unit of slack, or a 4-word query could only be
rewritten with exactly 4 words.

Difference: 1 - difflib's character-level similarity ratio (2 * matched chars / total chars) of the two texts
after NFKC, lower-casing and whitespace collapsing. Character level works for CJK (no word splitting needed)
and counts reordering and re-wording alike. "30% different" means difference >= 0.30. Texts of two or more
sentences are paragraphs: QZhou asks only 20% there, and no two adjacent sentences copied from the original.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher

from qzhou.data.records import normalize_text
from qzhou.synthesis.client import InvalidOutput

CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
WORD = re.compile(r"\w+")
SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|(?<=[。！？])")
PARAGRAPH_MIN_DIFF = 0.20


def text_length(text: str) -> int:
    """CJK characters + words of everything else (see module docstring)."""
    cjk = len(CJK.findall(text))
    return cjk + len(WORD.findall(CJK.sub(" ", text)))


def cjk_share(text: str) -> float:
    n = text_length(text)
    return len(CJK.findall(text)) / n if n else 0.0


def length_unit(text: str) -> str:
    return "characters" if cjk_share(text) > 0.5 else "words"


def difference(a: str, b: str) -> float:
    """1 - character-level similarity of the normalised texts (0 = identical, 1 = nothing in common)."""
    a, b = normalize_text(a)[:4000], normalize_text(b)[:4000]  # bounded: SequenceMatcher is quadratic
    return 1.0 - SequenceMatcher(None, a, b, autojunk=False).ratio()


def sentences(text: str) -> list[str]:
    return [s for s in (normalize_text(p) for p in SENTENCE_END.split(text)) if s]


def text_field(data: dict, key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InvalidOutput(f'"{key}" must be a non-empty string (got {value!r:.80})')
    return value.strip()


def check_length(new: str, ref: str, tol: float, what: str) -> None:
    n, m = text_length(new), text_length(ref)
    slack = max(1.0, tol * m)
    if abs(n - m) > slack:
        unit = length_unit(ref)
        raise InvalidOutput(f"{what} has {n} {unit}; it must have {max(1, round(m - slack))}-{round(m + slack)} "
                            f"{unit} (within {tol:.0%} of {m})")


def check_language(new: str, ref: str, what: str) -> None:
    if abs(cjk_share(new) - cjk_share(ref)) > 0.5:
        raise InvalidOutput(f"{what} is not in the language of the original")


def check_paraphrase(original: str, new: str, tol: float = 0.15, min_diff: float = 0.30) -> None:
    """Raise InvalidOutput naming the broken rule (the client feeds the reason back to the model)."""
    if normalize_text(new) == normalize_text(original):
        raise InvalidOutput("the paraphrase is identical to the original")
    check_language(new, original, "the paraphrase")
    check_length(new, original, tol, "the paraphrase")
    old_sentences = sentences(original)
    need = min(min_diff, PARAGRAPH_MIN_DIFF) if len(old_sentences) >= 2 else min_diff
    if len(old_sentences) >= 2:
        new_sentences = sentences(new)
        kept = set(old_sentences)
        for a, b in zip(new_sentences, new_sentences[1:]):
            if a in kept and b in kept:
                raise InvalidOutput("two adjacent sentences are copied from the original")
    diff = difference(original, new)
    if diff < need:
        raise InvalidOutput(f"the paraphrase is only {diff:.0%} different from the original (needs >= {need:.0%}): "
                            "use other words and another sentence structure")


def check_distinct(new: str, others: list[str], what: str) -> None:
    keys = {normalize_text(t) for t in others}
    if normalize_text(new) in keys:
        raise InvalidOutput(f"{what} repeats a text it must differ from")
