"""Drop training records that share a text with evaluation data (QZhou decontaminated its MTEB-derived training
splits against the test sets). Texts are compared after `normalize_text` (NFKC, lower case, whitespace
collapsed); every dropped record goes to `OUTPUT.contaminated.jsonl` with the text that matched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from qzhou.data.readers import JsonlWriter, read_rows
from qzhou.data.records import normalize_text, texts_of


def eval_texts(sources: list[str | Path], fields: list[str] | None = None, reader: dict | None = None) -> set[str]:
    """Normalised texts of the evaluation files: the given fields, or every string field of every row."""
    seen: set[str] = set()
    for source in sources:
        for _, row in read_rows(source, **(reader or {})):
            values = [row.get(f) for f in fields] if fields else list(row.values())
            for v in values:
                items = v if isinstance(v, list) else [v]
                seen.update(normalize_text(t) for t in items if isinstance(t, str) and t.strip())
    return seen


def decontaminate(train: str | Path, output: str | Path, blocked: set[str], progress: bool = True) -> dict[str, Any]:
    output = Path(output)
    side = output.with_name(output.name.removesuffix(".jsonl") + ".contaminated.jsonl")
    with JsonlWriter(output) as out, JsonlWriter(side) as dropped:
        for where, record in tqdm(read_rows(train), desc=f"decontaminate {Path(train).name}", disable=not progress):
            hit = next((t for t in texts_of(record) if normalize_text(t) in blocked), None)
            if hit is None:
                out.write(record)
            else:
                dropped.write({"source": where, "matched": hit, "record": record})
    return {"train": str(train), "output": str(output), "kept": out.count, "dropped": dropped.count,
            "dropped_file": str(side)}
