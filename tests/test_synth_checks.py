"""The constraint checks (length, difference, language, paragraphs) and the per-task policy."""

from __future__ import annotations

import pytest

from qzhou.data.readers import DataError
from qzhou.synthesis.checks import check_length, check_paraphrase, difference, length_unit, text_length
from qzhou.synthesis.client import InvalidOutput
from qzhou.synthesis.operations import Options, pick
from qzhou.synthesis.prompts import PROMPT_NAMES, load_personas, load_prompt
from qzhou.synthesis.runner import check_input


def test_length_counts_words_and_cjk_characters():
    assert text_length("How tall is the Eiffel Tower?") == 6
    assert text_length("巴黎是法国的首都") == 8
    assert text_length("Python 是一种语言") == 1 + 5
    assert length_unit("巴黎是法国的首都") == "characters" and length_unit("a b c") == "words"


def test_length_tolerance_has_one_unit_of_slack():
    check_length("one two three four five", "a b c d", 0.15, "x")  # 5 vs 4: within max(1, 0.6)
    with pytest.raises(InvalidOutput, match="must have 3-5 words"):
        check_length("one two three four five six", "a b c d", 0.15, "x")
    check_length(" ".join(["w"] * 115), " ".join(["w"] * 100), 0.15, "x")
    with pytest.raises(InvalidOutput, match="within 15% of 100"):
        check_length(" ".join(["w"] * 116), " ".join(["w"] * 100), 0.15, "x")


def test_difference_is_character_level_after_normalisation():
    assert difference("Hello  World", "hello world") == 0
    assert difference("abc", "xyz") == 1
    assert 0.0 < difference("how tall is the eiffel tower", "what is the height of the eiffel tower") < 0.5


@pytest.mark.parametrize("new, reason", [
    ("How tall is the Eiffel Tower?", "identical"),
    ("how  tall is the EIFFEL tower?", "identical"),
    ("How high is the Eiffel Tower?", "only"),                                  # too close
    ("What height does the famous iron tower in Paris reach above the ground?", "has 13 words"),
    ("埃菲尔铁塔有多高", "language"),
])
def test_paraphrase_violations_name_the_rule(new, reason):
    with pytest.raises(InvalidOutput, match=reason):
        check_paraphrase("How tall is the Eiffel Tower?", new)


def test_paraphrase_accepts_a_real_rewrite_and_checks_paragraphs():
    check_paraphrase("How tall is the Eiffel Tower?", "What height does that Paris landmark reach?")
    para = "The tower opened in 1889. It is 330 metres tall. It was the tallest building for 41 years."
    with pytest.raises(InvalidOutput, match="adjacent sentences"):
        check_paraphrase(para, "Opened in 1889, the monument is famous. It is 330 metres tall. "
                               "It was the tallest building for 41 years.")


def test_policy_sts_and_classification_get_paraphrase_only():
    sts = {"text1": "a cat sits", "text2": "a cat is sitting", "score": 4.5}
    assert check_input("paraphrase", "f.jsonl:3", sts, Options()) == "sts"
    for op in ("extend", "hard-negatives"):
        with pytest.raises(DataError, match=r"f.jsonl:3: .* applies to retrieval records, this is a sts record"):
            check_input(op, "f.jsonl:3", sts, Options())
    with pytest.raises(DataError, match=r"f.jsonl:4: pos\[0\] is int, not a string"):
        check_input("extend", "f.jsonl:4", {"query": "q", "pos": [3]}, Options())
    with pytest.raises(DataError, match=r"f.jsonl:5: field 'body' must hold the document text"):
        check_input("queries", "f.jsonl:5", {"text": "doc"}, Options(text_field="body"))
    with pytest.raises(DataError, match=r"--fields names 'neg'"):
        check_input("paraphrase", "f.jsonl:6", {"query": "q", "pos": ["p"]}, Options(fields=("neg",)))


def test_prompts_load_and_fill_every_slot(tmp_path):
    for name in PROMPT_NAMES:
        p = load_prompt(name)
        messages = p.render(**{s: f"<{s}>" for s in p.slots})
        assert "JSON" in messages[-1]["content"] and "{{" not in str(messages)
    with pytest.raises(KeyError, match="no value for"):
        load_prompt("paraphrase").render(text="x")
    (tmp_path / "paraphrase.yaml").write_text("user: hi {{text}}\nextra: 1\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_prompt("paraphrase", tmp_path)
    assert len(load_personas()) >= 30


def test_draws_are_deterministic():
    assert pick(range(100), "doc", 1) == pick(range(100), "doc", 1)
    assert len({pick(range(1000), "doc", i) for i in range(20)}) > 10
