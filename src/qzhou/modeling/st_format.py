"""Writing a model folder in the sentence-transformers layout, so that `SentenceTransformer(path)`,
plain `transformers.AutoModel` (+ the pooling in 1_Pooling/config.json), TEI and vLLM all read it:

    config.json, model.safetensors, tokenizer files   the backbone (config.json carries is_causal)
    modules.json                                       Transformer -> Pooling -> Normalize
    sentence_bert_config.json                          max_seq_length
    1_Pooling/config.json                              pooling mode (current and legacy keys)
    2_Normalize/config.json                            (when normalized)
    config_sentence_transformers.json                  prompts: query / document
    qzhou_config.json                                  qzhou's own EmbedderConfig
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from qzhou.config import EmbedderConfig

log = logging.getLogger(__name__)

_ST_MODE = {"mean": "mean", "last": "lasttoken", "cls": "cls"}
_LEGACY = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens", "mean": "pooling_mode_mean_tokens",
           "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
           "weightedmean": "pooling_mode_weightedmean_tokens", "lasttoken": "pooling_mode_lasttoken"}


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save_tokenizer(tokenizer, folder: Path, padding_side: str, max_length: int) -> None:
    """`save_pretrained` with the padding side and max length written into tokenizer_config.json: transformers 5
    leaves padding_side out, and readers (sentence-transformers, TEI, vLLM) need it. Embedders and rerankers."""
    tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(folder)
    path = folder / "tokenizer_config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(padding_side=padding_side, model_max_length=max_length)
    data.pop("local_files_only", None)
    write_json(path, data)


def save_folder(folder: str | Path, backbone, tokenizer, config: EmbedderConfig, state_dict=None) -> Path:
    import sentence_transformers
    import torch
    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    backbone.save_pretrained(folder, state_dict=state_dict)
    save_tokenizer(tokenizer, folder, config.padding_side, config.max_length)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if config.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        write_json(folder / "2_Normalize" / "config.json", {})
    write_json(folder / "modules.json", modules)
    write_json(folder / "sentence_bert_config.json", {"max_seq_length": config.max_length, "do_lower_case": False})
    mode = _ST_MODE[config.pooling]
    pooling = {"word_embedding_dimension": backbone.config.hidden_size}
    pooling.update({key: name == mode for name, key in _LEGACY.items()})
    pooling["include_prompt"] = True
    write_json(folder / "1_Pooling" / "config.json", pooling)
    if config.query_suffix():
        log.warning("query_template %r has text after {q}; sentence-transformers prompts are prefixes only, "
                    "so SentenceTransformer(path) will not add it", config.query_template)
    write_json(folder / "config_sentence_transformers.json", {
        "__version__": {"sentence_transformers": sentence_transformers.__version__,
                        "transformers": transformers.__version__, "pytorch": torch.__version__},
        "model_type": "SentenceTransformer",
        "prompts": config.prompts(),
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    })
    config.save(folder)
    return folder
