"""Prompt templates are data files (`prompts/*.yaml`: a `system` and a `user` text with `{{name}}` slots), so a
user can read, diff and replace them without touching code (`--prompts DIR` points at a folder with the same
file names). `{{name}}` instead of `str.format` because the templates show literal JSON with braces."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

SLOT = re.compile(r"\{\{\s*(\w+)\s*\}\}")
PROMPT_NAMES = ("paraphrase", "extend", "hard_negative", "queries_config", "queries_generate")


@dataclass(frozen=True)
class Prompt:
    name: str
    system: str
    user: str
    path: str

    @property
    def slots(self) -> set[str]:
        return set(SLOT.findall(self.system)) | set(SLOT.findall(self.user))

    @property
    def digest(self) -> str:
        """Identifies the template text: a changed prompt makes new requests instead of reusing stored answers."""
        return hashlib.sha256((self.system + "\0" + self.user).encode()).hexdigest()[:16]

    def render(self, **values: object) -> list[dict[str, str]]:
        """-> chat messages. Every slot must be filled and every value used, so a typo fails loudly."""
        missing = self.slots - values.keys()
        if missing:
            raise KeyError(f"{self.path}: no value for {sorted(missing)}")
        unused = values.keys() - self.slots
        if unused:
            raise KeyError(f"{self.path}: the template has no slot for {sorted(unused)} (slots: {sorted(self.slots)})")

        def fill(text: str) -> str:
            return SLOT.sub(lambda m: str(values[m.group(1)]), text)

        messages = [{"role": "user", "content": fill(self.user).strip()}]
        if self.system.strip():
            messages.insert(0, {"role": "system", "content": fill(self.system).strip()})
        return messages


def prompt_dir() -> Path:
    return Path(str(resources.files("qzhou.synthesis") / "prompts"))


def load_prompt(name: str, folder: str | Path | None = None) -> Prompt:
    """Load `name`.yaml from `folder` (default: the templates shipped with qzhou)."""
    if name not in PROMPT_NAMES:
        raise KeyError(f"unknown prompt {name!r}; known: {', '.join(PROMPT_NAMES)}")
    path = Path(folder or prompt_dir()) / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such prompt file (copy it from {prompt_dir()} and edit it)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("user"), str):
        raise ValueError(f"{path}: needs a `user:` text (and optionally `system:`)")
    extra = set(data) - {"system", "user"}
    if extra:
        raise ValueError(f"{path}: unknown keys {sorted(extra)}; a prompt file has `system` and `user` only")
    return Prompt(name, data.get("system") or "", data["user"], str(path))


def load_personas(path: str | Path | None = None) -> list[str]:
    """One persona a line, '#' comments; the default list ships in prompts/personas.txt."""
    path = Path(path or prompt_dir() / "personas.txt")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such personas file (one persona a line)")
    lines = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    personas = [p for p in lines if p]
    if not personas:
        raise ValueError(f"{path}: no personas (one a line; '#' starts a comment)")
    return personas
