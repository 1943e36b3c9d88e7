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


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save_folder(folder: str | Path, backbone, tokenizer, config: EmbedderConfig, state_dict=None) -> Path:
    import sentence_transformers
    import torch
    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.model_max_length = config.max_length
    backbone.save_pretrained(folder, state_dict=state_dict)
    tokenizer.save_pretrained(folder)
    tok_cfg = folder / "tokenizer_config.json"  # transformers 5 does not write padding_side; readers need it
    data = json.loads(tok_cfg.read_text(encoding="utf-8"))
    data["padding_side"] = config.padding_side
    data.pop("local_files_only", None)
    _write(tok_cfg, data)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if config.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        _write(folder / "2_Normalize" / "config.json", {})
    _write(folder / "modules.json", modules)
    _write(folder / "sentence_bert_config.json", {"max_seq_length": config.max_length, "do_lower_case": False})
    mode = _ST_MODE[config.pooling]
    pooling = {"word_embedding_dimension": backbone.config.hidden_size}
    pooling.update({key: name == mode for name, key in _LEGACY.items()})
    pooling["include_prompt"] = True
    _write(folder / "1_Pooling" / "config.json", pooling)
    if config.query_suffix():
        log.warning("query_template %r has text after {q}; sentence-transformers prompts are prefixes only, "
                    "so SentenceTransformer(path) will not add it", config.query_template)
    _write(folder / "config_sentence_transformers.json", {
        "__version__": {"sentence_transformers": sentence_transformers.__version__,
                        "transformers": transformers.__version__, "pytorch": torch.__version__},
        "model_type": "SentenceTransformer",
        "prompts": config.prompts(),
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    })
    config.save(folder)
    return folder
