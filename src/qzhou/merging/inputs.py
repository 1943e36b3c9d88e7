"""Inputs of a merge: finding the model folder in what the user gave (a model folder, a training checkpoint, a LoRA
adapter over its base), hashing its weight files for the lineage, and refusing inputs that cannot be merged
(architecture, config values, tensor names/shapes, attention/pooling, tokenizer) with a message naming the difference.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qzhou.merging.shards import TensorInfo, read_folder, weight_files

log = logging.getLogger(__name__)

#: config.json keys that differ between checkpoints of one model without changing the weights' meaning
#: (is_causal follows the attention setting, which `embedder_settings` compares with a clearer message)
IGNORED_CONFIG = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "use_cache", "is_causal"}
ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class Input:
    """One merge input: the folder as given, the model folder holding the weights, its tensors, and what it was
    made from (the LoRA base) for the lineage."""

    given: Path
    folder: Path
    tensors: dict[str, TensorInfo]
    lora: dict[str, Any] | None = None
    hashes: dict[str, str] = field(default_factory=dict)

    def lineage(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"path": str(self.given.resolve()), "sha256": self.hashes}
        if self.lora:
            entry["lora"] = self.lora
        return entry


def model_folder(path: Path) -> Path:
    """A model folder, or a training checkpoint holding one in model/."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such folder")
    if not path.is_dir():
        raise ValueError(f"{path}: merge inputs are model folders (safetensors), not files")
    if not (path / "config.json").is_file() and not (path / ADAPTER_CONFIG).is_file() and (path / "model").is_dir():
        return path / "model"
    if (path / "adapter.pt").is_file() and not (path / "config.json").is_file():
        raise ValueError(f"{path}: a LoRA training checkpoint (adapter.pt) without a model; merge the run's saved "
                         "model folders, or save checkpoints with lora.merge_on_save true")
    return path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def open_input(path: str | Path, work: Path, lora_base: str | Path | None = None) -> Input:
    """Resolve one input: a LoRA adapter folder is merged into its base (peft) into `work` first."""
    given = Path(path)
    folder = model_folder(given)
    lora = None
    if (folder / ADAPTER_CONFIG).is_file():
        folder, lora = merge_lora(folder, work, lora_base)
    return Input(given, folder, read_folder(folder), lora)


def hash_input(inp: Input) -> dict[str, str]:
    """sha256 of the input's weight files (a LoRA input: of its adapter files), for the lineage."""
    files = sorted(Path(inp.lora["adapter"]).glob("adapter_model.*")) if inp.lora else weight_files(inp.folder)
    return {p.name: sha256(p) for p in files}


def merge_lora(adapter: Path, work: Path, lora_base: str | Path | None) -> tuple[Path, dict[str, Any]]:
    """adapter folder -> (a folder with base + adapter merged, lineage). The base class comes from the base's
    config.json `architectures` (a bare backbone for embedders, *ForCausalLM for rerankers); the adapter folder's
    other files (tokenizer, sentence-transformers and qzhou configs) are copied over, so the result is that model."""
    try:
        import transformers
        from peft import PeftModel
    except ImportError:
        raise ImportError("merging a LoRA adapter needs peft: pip install qzhou[train]") from None
    cfg = json.loads((adapter / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    base = Path(lora_base or cfg.get("base_model_name_or_path") or "")
    if not (base / "config.json").is_file():
        raise FileNotFoundError(f"{adapter / ADAPTER_CONFIG}: its base model {str(base)!r} is not a local model "
                                "folder; give it with --lora-base FOLDER")
    arch = (json.loads((base / "config.json").read_text(encoding="utf-8")).get("architectures") or ["AutoModel"])[0]
    model_cls = getattr(transformers, arch, None) or transformers.AutoModel
    model = model_cls.from_pretrained(base, dtype="auto")
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    out = work / f"lora-{len(list(work.glob('lora-*')))}"
    merged.save_pretrained(out)
    for item in adapter.iterdir():
        if item.name.startswith("adapter_") or item.name in ("config.json", "README.md"):
            continue
        target = out / item.name
        if item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
        elif not target.exists():
            target.write_bytes(item.read_bytes())
    log.info("merged LoRA adapter %s into %s", adapter, base)
    return out, {"adapter": str(adapter.resolve()), "base": str(base.resolve()), "r": cfg.get("r"),
                 "lora_alpha": cfg.get("lora_alpha")}


# ------------------------------------------------------------------------------------------------ compatibility
def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = sorted((set(a) | set(b)) - IGNORED_CONFIG, key=lambda k: (k not in ("model_type", "architectures"), k))
    return [f"{k}: {a.get(k, '(absent)')!r} vs {b.get(k, '(absent)')!r}" for k in keys if a.get(k) != b.get(k)]


def tensor_difference(a: dict[str, TensorInfo], b: dict[str, TensorInfo]) -> str | None:
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        return (f"tensors only in the first: {only_a[:3]}{' ...' if len(only_a) > 3 else ''}; "
                f"only in this one: {only_b[:3]}{' ...' if len(only_b) > 3 else ''}")
    for name, info in a.items():
        if info.shape != b[name].shape:
            return f"tensor {name} has shape {list(info.shape)} vs {list(b[name].shape)}"
    return None


def embedder_settings(folder: Path) -> dict[str, Any] | None:
    """attention / pooling / normalize of a qzhou or sentence-transformers folder; None for a plain HF folder."""
    if not (folder / "qzhou_config.json").is_file() and not (folder / "modules.json").is_file():
        return None
    from qzhou.modeling.loading import detect_config

    cfg = detect_config(folder, _json(folder / "config.json"))
    return {"attention": cfg.attention, "pooling": cfg.pooling, "normalize": cfg.normalize}


def same_tokenizer(a: Path, b: Path) -> bool | None:
    """Whether two folders tokenize alike: identical tokenizer.json files, else the same vocabulary (its `model`
    and added tokens; post-processors that only append a pooling token do not count), else identical vocab
    files. None when either folder has no tokenizer. (A 0.5B Qwen tokenizer.json is 11 MB: bytes first.)"""
    ta, tb = a / "tokenizer.json", b / "tokenizer.json"
    if ta.is_file() and tb.is_file():
        raw_a, raw_b = ta.read_bytes(), tb.read_bytes()
        if raw_a == raw_b:
            return True
        da, db = json.loads(raw_a), json.loads(raw_b)
        return (da.get("model"), da.get("added_tokens")) == (db.get("model"), db.get("added_tokens"))
    names = ("vocab.json", "merges.txt", "vocab.txt", "tokenizer.model")
    fa = {n: (a / n).read_bytes() for n in names if (a / n).is_file()}
    fb = {n: (b / n).read_bytes() for n in names if (b / n).is_file()}
    return fa == fb if fa and fb else None


def check_compatible(inputs: list[Input], base: Input | None = None) -> None:
    """Raise ValueError naming the first difference between the first input and any other (or the base, which is
    exempt from the attention/pooling check: a task-vector base is usually the plain LLM)."""
    ref = inputs[0]
    ref_cfg = _json(ref.folder / "config.json")
    ref_settings = embedder_settings(ref.folder)
    for other in inputs[1:] + ([base] if base else []):
        label = f"{other.given} vs {ref.given}"
        diff = config_differences(ref_cfg, _json(other.folder / "config.json"))
        if diff:
            raise ValueError(f"cannot merge {label}: config.json differs in {'; '.join(diff[:4])}")
        why = tensor_difference(ref.tensors, other.tensors)
        if why:
            raise ValueError(f"cannot merge {label}: {why}")
        settings = embedder_settings(other.folder)
        if other is not base and settings != ref_settings and settings is not None and ref_settings is not None:
            diff = [f"{k} {ref_settings[k]!r} vs {settings[k]!r}" for k in settings if settings[k] != ref_settings[k]]
            raise ValueError(f"cannot merge {label}: embedder settings differ ({', '.join(diff)}); "
                             "merge models that embed the same way")
        if same_tokenizer(ref.folder, other.folder) is False:
            raise ValueError(f"cannot merge {label}: the tokenizers' vocabularies differ")
