"""Writing a reranker for other runtimes, each checked by a test to score exactly as `Reranker.score`:

`save_cross_encoder` (= `Reranker.save`): the sentence-transformers >= 5.6 CrossEncoder layout for causal rerankers

    config.json, model.safetensors, tokenizer files   the *ForCausalLM, as transformers saves it
    chat_template.jinja                                the prompt for a (query, document) pair (`template.chat_template`)
    modules.json                                       Transformer (text-generation) -> LogitScore
    sentence_bert_config.json                          transformer_task, modalities, max_seq_length
    1_LogitScore/config.json                           true/false token ids (yes/no): score = z_yes - z_no
    config_sentence_transformers.json                  CrossEncoder, sigmoid activation (so predict = p(yes))
    qzhou_reranker.json                                qzhou's own RerankerConfig

`export_seq_cls`: a *ForSequenceClassification copy with one label whose weight is the yes row minus the no row of
the output layer (so sigmoid(logit) = p(yes)), plus `qwen3_reranker.jinja` for vLLM's `--chat-template`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from qzhou.modeling.st_format import save_tokenizer, write_json
from qzhou.reranking.template import chat_template

VLLM_TEMPLATE = "qwen3_reranker.jinja"


def _save_tokenizer(reranker, folder: Path) -> None:
    """The tokenizer with the reranker prompt as its chat template, left padding and max length written down."""
    tok = reranker.tokenizer
    old = getattr(tok, "chat_template", None)
    tok.chat_template = chat_template(reranker.config)
    try:
        save_tokenizer(tok, folder, "left", reranker.max_length)
    finally:
        tok.chat_template = old


def save_cross_encoder(reranker, folder: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    import sentence_transformers
    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # state_dict: keyed as the causal LM's own state dict (as Embedder.save's are the backbone's), the convention
    # training.saving gathers FSDP / ZeRO-3 weights and merges LoRA in
    reranker.model.save_pretrained(folder, state_dict=state_dict)
    _save_tokenizer(reranker, folder)
    write_json(folder / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
        {"idx": 1, "name": "1", "path": "1_LogitScore",
         "type": "sentence_transformers.cross_encoder.modules.logit_score.LogitScore"},
    ])
    logits = {"method": "forward", "method_output_name": "logits"}
    write_json(folder / "sentence_bert_config.json", {
        "transformer_task": "text-generation",
        "modality_config": {"text": logits, "message": {**logits, "format": "flat"}},
        "module_output_name": "causal_logits",
        "max_seq_length": reranker.max_length,
    })
    write_json(folder / "1_LogitScore" / "config.json", {
        "true_token_id": reranker.yes_id, "false_token_id": reranker.no_id, "module_input_name": "causal_logits"})
    write_json(folder / "config_sentence_transformers.json", {
        "__version__": {"sentence_transformers": sentence_transformers.__version__,
                        "transformers": transformers.__version__, "pytorch": torch.__version__},
        "model_type": "CrossEncoder",
        "activation_fn": "torch.nn.modules.activation.Sigmoid",
        "prompts": {"instruction": reranker.config.instruction},
        "default_prompt_name": None,
    })
    reranker.config.save(folder)
    return folder


def seq_cls_model(reranker) -> torch.nn.Module:
    """A *ForSequenceClassification with the reranker's backbone and one label, weight = W[yes] - W[no]:
    its logit at the last token is z_yes - z_no, the log-odds `Reranker.score` returns."""
    from transformers import AutoModelForSequenceClassification

    src = reranker.model
    head = src.lm_head
    if getattr(head, "bias", None) is not None or getattr(src.config, "final_logit_softcapping", None):
        raise ValueError(f"{type(src).__name__} has an output bias or logit soft-capping; a one-label linear "
                         "head cannot reproduce its yes/no log-odds")
    config = src.config.__class__.from_dict(src.config.to_dict())
    config.num_labels = 1
    config.pad_token_id = reranker.tokenizer.pad_token_id
    config.use_sep_token = False  # vLLM: an LLM reranker's prompt has no separator token
    cls = AutoModelForSequenceClassification._model_mapping[type(config)]
    config.architectures = [cls.__name__]
    model = cls(config).to(head.weight.dtype)
    prefix = src.base_model_prefix
    state = {f"{prefix}.{k}": v for k, v in getattr(src, prefix).state_dict().items()}
    diff = head.weight[reranker.yes_id].float() - head.weight[reranker.no_id].float()
    state["score.weight"] = diff.to(head.weight.dtype).unsqueeze(0).clone()
    model.load_state_dict(state, strict=True)
    return model.eval()


def export_seq_cls(reranker, folder: str | Path) -> Path:
    """Write the seq-cls copy, its tokenizer (the prompt as chat template), `qwen3_reranker.jinja` for vLLM and
    qzhou_reranker.json (the prompt settings, for reference)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = seq_cls_model(reranker)
    model.save_pretrained(folder)
    _save_tokenizer(reranker, folder)
    (folder / VLLM_TEMPLATE).write_text(chat_template(reranker.config), encoding="utf-8")
    reranker.config.save(folder)
    return folder
