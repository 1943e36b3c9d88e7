"""`merge_checkpoints(paths, method, ..., out) -> MergeReport`: the streaming merge of model folders.

Tensor by tensor, in the first input's file order: read that tensor from every input (and the base), plan it
(`methods.plan_tensor`), and append the merged bytes, chunk by chunk, to the output shard being written. Peak memory
is the raw tensors of one name plus an fp32 chunk (TIES / DARE: plus full fp32 task vectors of that tensor). The
output mirrors the first input's files: same shards, same names, same dtypes, and every non-weight file copied
(config, tokenizer, sentence-transformers modules, pooling, prompts, qzhou_config.json), plus `merge.json`.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from qzhou.merging.inputs import Input, check_compatible, hash_input, open_input
from qzhou.merging.methods import BASE_METHODS, MERGEKIT_DOT, MergeSpec, plan_tensor
from qzhou.merging.shards import DTYPES, INDEX_NAME, StreamWriter, load_tensor, read_header, weight_files

log = logging.getLogger(__name__)
LINEAGE = "merge.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf", ".pth")
SKIPPED = {INDEX_NAME, LINEAGE, "training_state.pt", "adapter_config.json"}
SEARCH_REPORT = "merge_search"  # search_merge's table beside the weights: not copied into a later merge


@dataclass
class MergeReport:
    """What `merge.json` holds: the inputs with hashes, the method and its parameters, and what happened."""

    out: str
    method: str
    parameters: dict[str, Any]
    inputs: list[dict[str, Any]]
    base: dict[str, Any] | None
    tensors: int = 0
    fallbacks: dict[str, int] = field(default_factory=dict)
    fallback_tensors: list[str] = field(default_factory=list)
    above_mergekit_dot: int = 0
    min_cosine: float | None = None
    seconds: float = 0.0
    cosines: list[float] = field(default_factory=list, repr=False)  # per tensor: min cosine to the first input
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def fallback_count(self) -> int:
        return sum(self.fallbacks.values())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("cosines")
        return {"format": 1, **data, "fallback_count": self.fallback_count}

    def summary(self) -> str:
        line = f"merged {len(self.inputs)} inputs with {self.method} into {self.out}: {self.tensors} tensors"
        if self.method in ("slerp", "multislerp"):
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.fallbacks.items())) or "none"
            line += (f"; linear fallbacks: {self.fallback_count} ({kinds}); tensors with cosine > {MERGEKIT_DOT} "
                     f"(which mergekit would average): {self.above_mergekit_dot}")
        return line + f"; {self.seconds:.1f}s"


def merge_checkpoints(paths: list[str | Path], method: str = "slerp", *, out: str | Path,
                      weights: list[float] | None = None, t: float | None = None, base: str | Path | None = None,
                      density: float = 0.5, lam: float = 1.0, seed: int = 0, min_angle: float = 1e-4,
                      lora_base: str | Path | None = None, hash_files: bool = True,
                      show_progress: bool = True, threads: int | None = 1) -> MergeReport:
    """Merge model folders (embedders, rerankers, any safetensors HF model; LoRA adapters over their base;
    training checkpoints holding model/) into `out`. slerp with more than two inputs is chained in the order given.
    The inputs' sha256 are computed in a background thread while the merge runs (hashlib releases the GIL).
    `threads`: torch threads during the merge (None: torch's setting). The work is memory-bound elementwise passes;
    one thread is the default because extra threads stall at OpenMP barriers whenever the cores are shared
    (bench/results/merge-loaded.json: slerp of a 0.5B pair 12.4 s with 1 thread, 24.6 s with 2, on a loaded
    2-core machine; 6.1 s vs 5.2 s when it is quiet)."""
    start = time.perf_counter()
    spec = MergeSpec(method, weights=weights, t=t, density=density, lam=lam, seed=seed, min_angle=min_angle)
    if not paths:
        raise ValueError("nothing to merge: give at least one model folder")
    if base is not None and method not in BASE_METHODS:
        raise ValueError(f"--base applies to {', '.join(BASE_METHODS)}; --method {method} does not use it")
    if method in BASE_METHODS and base is None:
        raise ValueError(f"--method {method} merges task vectors relative to a base model: add --base FOLDER")
    weights_used = spec.input_weights(len(paths))
    out = Path(out)
    _check_out(out, paths, base)
    with tempfile.TemporaryDirectory(prefix="qzhou-merge-") as tmp:
        inputs = [open_input(p, Path(tmp), lora_base) for p in paths]
        base_input = open_input(base, Path(tmp), lora_base) if base is not None else None
        check_compatible(inputs, base_input)
        out.mkdir(parents=True, exist_ok=True)
        copy_side_files(inputs[0].folder, out)
        everyone = inputs + ([base_input] if base_input else [])
        report = MergeReport(str(out), method, _parameters(spec, weights_used, len(paths)), [], None)
        previous = torch.get_num_threads()
        with ThreadPoolExecutor(max_workers=1) as pool:
            hashes = [pool.submit(hash_input, i) for i in everyone] if hash_files else []
            try:
                if threads:
                    torch.set_num_threads(threads)
                stream_weights(inputs, base_input, spec, out, report, show_progress)
            finally:
                torch.set_num_threads(previous)
            for inp, future in zip(everyone, hashes):
                inp.hashes = future.result()
        report.inputs = [i.lineage() for i in inputs]
        report.base = base_input.lineage() if base_input else None
    report.seconds = round(time.perf_counter() - start, 2)
    (out / LINEAGE).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return report


def _parameters(spec: MergeSpec, weights: list[float], n: int) -> dict[str, Any]:
    params: dict[str, Any] = {"weights": weights}
    if spec.method == "slerp":
        params.update(t=spec.t, min_angle=spec.min_angle,
                      order="inputs in the order given; input k joins the running result at "
                            "t = w_k / (w_1 + ... + w_k)" if n > 2 else "first -> second")
    if spec.method == "multislerp":
        params.update(min_angle=spec.min_angle)
    if spec.method in BASE_METHODS:
        params.update(lam=spec.lam)
    if spec.method in ("ties", "dare-linear", "dare-ties"):
        params.update(density=spec.density)
    if spec.method.startswith("dare"):
        params.update(seed=spec.seed)
    return params


def _check_out(out: Path, paths: list[str | Path], base: str | Path | None) -> None:
    for p in [*paths, *([base] if base else [])]:
        if Path(p).resolve() == out.resolve():
            raise ValueError(f"--out {out} is one of the inputs; write the merge to a new folder")
    if out.exists() and any(out.iterdir()) and not (out / LINEAGE).is_file():
        raise ValueError(f"--out {out} exists and is not an earlier merge; give an empty or new folder")
    for old in out.glob("*.safetensors") if (out / LINEAGE).is_file() else []:  # an earlier merge's shards
        old.unlink()


def copy_side_files(src: Path, out: Path) -> None:
    """Everything but the weights and training state: configs, tokenizer, ST modules, qzhou_config.json."""
    for item in src.iterdir():
        if (item.name in SKIPPED or item.name.startswith((".", SEARCH_REPORT))
                or item.suffix in WEIGHT_SUFFIXES):
            continue
        if item.is_dir():
            if any(item.rglob("*.safetensors")):  # e.g. a checkpoint's model/ next to it: not a side file
                continue
            shutil.copytree(item, out / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, out / item.name)


def stream_weights(inputs: list[Input], base: Input | None, spec: MergeSpec, out: Path, report: MergeReport,
                   show_progress: bool) -> None:
    """Write every shard of the output, one tensor at a time."""
    from tqdm.auto import tqdm

    files = weight_files(inputs[0].folder)
    total = sum(i.end - i.start for i in inputs[0].tensors.values())
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"merge ({spec.method})", disable=not show_progress)
    for path in files:
        names, meta = read_header(path)
        order = sorted(names, key=lambda n: names[n].start)
        layout = {n: (DTYPES[names[n].dtype], names[n].shape) for n in order}
        writer = StreamWriter(out / path.name, layout, meta)
        try:
            _write_file(writer, names, inputs, base, spec, report, bar)
        except BaseException:
            writer.file.close()
            raise
        writer.close()
    bar.close()
    if (inputs[0].folder / INDEX_NAME).is_file():
        shutil.copy2(inputs[0].folder / INDEX_NAME, out / INDEX_NAME)
    report.above_mergekit_dot = sum(c > MERGEKIT_DOT for c in report.cosines)
    report.min_cosine = round(min(report.cosines), 6) if report.cosines else None


def _write_file(writer: StreamWriter, names: dict, inputs: list[Input], base: Input | None, spec: MergeSpec,
                report: MergeReport, bar) -> None:
    """The tensors of one output shard, in its header's order."""
    for name in writer.order:
        dtype = DTYPES[names[name].dtype]
        plan = plan_tensor(name, [load_tensor(i.tensors[name]) for i in inputs], spec,
                           load_tensor(base.tensors[name]) if base else None)
        wrote = False
        for chunk in plan.chunks():
            writer.write(name, chunk.to(dtype))
            wrote = True
        if not wrote:  # an empty tensor still gets its (empty) entry
            writer.write(name, torch.empty(0, dtype=dtype))
        if plan.fallback:
            report.fallbacks[plan.fallback] = report.fallbacks.get(plan.fallback, 0) + 1
            report.fallback_tensors.append(name)
        if plan.cosines:
            report.cosines.append(min(plan.cosines))
        report.tensors += 1
        bar.update(names[name].end - names[name].start)
