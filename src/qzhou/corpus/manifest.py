"""`manifest.json` of an embeddings folder: what was encoded, by which model, how, and how fast.

A rerun may only add shards to a folder whose manifest says the same model (fingerprint: config hash + weights
hash), prompt, dimension, normalisation, storage dtype and shard plan; anything else would mix two embedding
spaces in one index. `check_same` names each difference. Per-process figures (rows, seconds, rows/s) go to
`workers/<tag>.json` first, so `--shard i/N` processes writing one folder never overwrite each other, and every
manifest write gathers all of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "qzhou-corpus-embeddings/1"
#: the entries that must agree for two runs to write into the same folder
IDENTITY = ("model.fingerprint", "model.dtype", "prompt", "dimension", "normalize", "store_dtype", "max_length",
            "input.field", "input.id_field", "input.shard_rows", "input.files")
_VOLATILE = {"transformers_version", "_name_or_path", "name_or_path", "architectures", "dtype", "torch_dtype",
             "use_cache", "_commit_hash"}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_hash(embedder) -> str:
    """Hash of the embedder config (pooling, template, ...) and the backbone's architecture config."""
    backbone = {k: v for k, v in embedder.backbone.config.to_dict().items() if k not in _VOLATILE}
    return _digest({"embedder": embedder.config.model_dump(), "backbone": backbone})


def weights_hash(embedder, sample: int = 4096) -> str:
    """Hash of every tensor's name, shape, dtype and `sample` evenly strided values: any fine-tune or merge changes
    it, and it costs milliseconds on any device instead of reading gigabytes of weights."""
    import torch

    h = hashlib.sha256()
    for name, t in embedder.backbone.state_dict().items():
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // sample)
        values = flat[::step][:sample].to("cpu", torch.float32).numpy()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(np.ascontiguousarray(values).tobytes())
    return h.hexdigest()[:16]


def fingerprint(embedder) -> dict[str, str]:
    return {"config": config_hash(embedder), "weights": weights_hash(embedder)}


def versions() -> dict[str, str]:
    import pyarrow
    import torch
    import transformers

    from qzhou import __version__

    return {"qzhou": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "pyarrow": pyarrow.__version__, "python": platform.python_version()}


def _get(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def check_same(old: dict, new: dict, where: Path) -> None:
    """Raise naming every identity entry that differs between an existing manifest and this run."""
    if old.get("format") != FORMAT:
        raise ValueError(f"{where}: not a qzhou embeddings manifest (format {old.get('format')!r}, want {FORMAT!r})")
    diffs = []
    for key in IDENTITY:
        a, b = _get(old, key), _get(new, key)
        if a == b:
            continue
        if key == "input.files":
            a_by = {f["rel"]: f for f in a or []}
            b_by = {f["rel"]: f for f in b or []}
            changed = sorted(set(a_by) ^ set(b_by)) + sorted(r for r in set(a_by) & set(b_by) if a_by[r] != b_by[r])
            diffs.append(f"input files changed ({', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}: "
                         "added, removed, or a different size/mtime)")
        else:
            diffs.append(f"{key} {json.dumps(a)[:80]} in the folder vs {json.dumps(b)[:80]} now")
    if diffs:
        raise ValueError(f"{where} was written by a different run: " + "; ".join(diffs)
                         + ". Use a new --output folder, or --no-resume to delete its shards and start again")


def read_manifest(folder: Path) -> dict | None:
    path = folder / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: unreadable manifest ({e.msg}); delete the folder or pick another "
                         "--output") from None


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def worker_tag(name: str) -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{name}-{int(time.time() * 1000)}"


def record_worker(folder: Path, tag: str, stats: dict) -> None:
    """One process's figures: rows encoded, seconds, rows/s, device."""
    write_json_atomic(folder / "workers" / f"{tag}.json", stats)


def write_manifest(folder: Path, manifest: dict) -> dict:
    """Gather every worker's figures and the shard status, then write `manifest.json` atomically."""
    workers = []
    for p in sorted((folder / "workers").glob("*.json")):
        try:
            workers.append(json.loads(p.read_text(encoding="utf-8")))
        except json.JSONDecodeError:
            continue  # a file being replaced right now; the next write picks it up
    done = [s for s in manifest["shards"] if (folder / s["name"]).is_file()]
    manifest = {**manifest, "workers": workers, "shards_done": len(done),
                "rows_done": sum(s["end"] - s["start"] for s in done),
                "complete": len(done) == len(manifest["shards"])}
    write_json_atomic(folder / "manifest.json", manifest)
    return manifest
