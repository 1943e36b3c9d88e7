"""The Qwen3-Reranker prompt, written once: the chat markup (system turn, user turn with instruction, query and
document, assistant turn opened with an empty think block), the yes/no token ids, and the Jinja template that
sentence-transformers (>= 5.6) and vLLM's score API render for a (query, document) pair.

Every runtime must see exactly the same text, or the scores differ between them (the most reported problem with
LLM rerankers). So the text is built here and nowhere else, and the Jinja template is tested to render it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

CONFIG_NAME = "qzhou_reranker.json"
SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
          'Note that the answer can only be "yes" or "no".')
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
PREFIX = "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<Instruct>: {instruction}\n<Query>: {query}\n<Document>: "
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


class RerankerConfig(BaseModel):
    """What a saved reranker folder needs besides the weights (`qzhou_reranker.json`)."""

    model_config = ConfigDict(extra="forbid")
    system: str = SYSTEM
    instruction: str = DEFAULT_INSTRUCTION
    yes_token: str = "yes"
    no_token: str = "no"
    max_length: int = 8192

    def render(self, query: str, doc: str, instruction: str | None = None) -> tuple[str, int, int]:
        """The full prompt text and the character span [start, end) of the document inside it."""
        head = PREFIX.format(system=self.system, instruction=instruction or self.instruction, query=query)
        return head + doc + SUFFIX, len(head), len(head) + len(doc)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CONFIG_NAME
        path.write_text(json.dumps(self.model_dump(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> RerankerConfig | None:
        path = Path(folder) / CONFIG_NAME
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
        except Exception as e:  # pydantic: unknown or badly typed field
            raise ValueError(f"{path}: {e}".splitlines()[0] + " (fields: " + ", ".join(cls.model_fields) + ")") from None


def _jinja_literal(text: str) -> str:
    """`text` as a Jinja string literal (JSON escaping is valid Jinja)."""
    return json.dumps(text, ensure_ascii=False)


def chat_template(config: RerankerConfig) -> str:
    """A Jinja chat template rendering a pair as messages with roles `query` and `document` (and an optional
    `system` message carrying the instruction), which is how sentence-transformers >= 5.6 and vLLM's score API
    (`--chat-template`) hand a pair to a causal reranker. It renders exactly `RerankerConfig.render`."""
    pick = 'messages | selectattr("role", "eq", "{}") | map(attribute="content") | first'
    instruction = (f"instruction | default({pick.format('system')} | default({_jinja_literal(config.instruction)}, "
                   "true), true)")
    head, _, tail = PREFIX.partition("{instruction}")
    head = head.format(system=config.system)
    middle, _, rest = tail.partition("{query}")
    return ("{{- " + _jinja_literal(head) + " -}}{{- " + instruction + " -}}"
            "{{- " + _jinja_literal(middle) + " -}}{{- " + pick.format("query") + " -}}"
            "{{- " + _jinja_literal(rest) + " -}}{{- " + pick.format("document") + " -}}"
            "{{- " + _jinja_literal(SUFFIX) + " -}}")


def token_id(tokenizer: Any, word: str) -> int:
    """The id of `word` as one token, read from the tokenizer (never hard-coded: Qwen3's yes/no are 9693/2152,
    another vocabulary has others). The word must encode to a single token and that token must decode to it."""
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1 or tokenizer.decode(ids) != word:
        raise ValueError(f"the tokenizer encodes {word!r} as {len(ids)} tokens {ids}; a yes/no reranker needs "
                         f"{word!r} as one token (set yes_token / no_token in {CONFIG_NAME} to words that are)")
    return int(ids[0])


def tokenizer_renders_qwen3(tokenizer: Any, config: RerankerConfig) -> bool:
    """True when the tokenizer's own chat template (system + user turn, generation prompt, thinking off) renders
    the exact Qwen3-Reranker markup, as Qwen3's does; otherwise qzhou writes the Qwen markup out itself."""
    if not getattr(tokenizer, "chat_template", None):
        return False
    text, start, end = config.render("Q", "D")
    user = text[text.index("<Instruct>"):end]
    messages = [{"role": "system", "content": config.system}, {"role": "user", "content": user}]
    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                 enable_thinking=False)
    except Exception:  # a template that needs other roles or kwargs is simply not the Qwen3 one
        return False
    return rendered == text
