"""`Reranker`: a decoder LLM that judges (query, document) pairs the Qwen3-Reranker way, p(yes) at the prompt's
last position. Shares loading, dtype and device code with `Embedder`; see `template` for the prompt."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qzhou.modeling import loading
from qzhou.modeling.embedder import forward_in_batches, pad_ids
from qzhou.modeling.runtime import resolve_device, resolve_dtype
from qzhou.reranking.template import RerankerConfig, token_id, tokenizer_renders_qwen3

MAX_BATCH_SIZE = 128
_CHARS_PER_TOKEN_CUT = 8  # documents longer than max_length * this many characters are cut before tokenizing
_CUT_MARGIN = 16  # tokens past the kept ones that a pre-cut document must still have (so the cut cannot matter)


class Reranker(nn.Module):
    """A point-wise LLM reranker. Build it with `Reranker.load(...)`; `score` pairs; `rank` documents; `save` a
    folder that sentence-transformers' `CrossEncoder`, transformers and `Reranker.load` read as they are."""

    def __init__(self, model: nn.Module, tokenizer: Any, config: RerankerConfig):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.yes_id = token_id(tokenizer, config.yes_token)
        self.no_id = token_id(tokenizer, config.no_token)
        if self.yes_id == self.no_id:
            raise ValueError(f"yes_token {config.yes_token!r} and no_token {config.no_token!r} are the same token")
        if getattr(model, "lm_head", None) is None:
            raise ValueError(f"{type(model).__name__} has no lm_head: a reranker needs a *ForCausalLM model")
        tokenizer.padding_side = "left"
        tokenizer.model_max_length = config.max_length
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if tokenizer.pad_token is None:
            raise ValueError("the tokenizer has no pad, eos or unk token to pad batches with")
        #: "left" (the default, as Qwen3 and sentence-transformers run it) or "right"; both give the same scores
        self.padding_side = "left"
        #: "tokenizer" when the tokenizer's chat template renders the exact Qwen3 markup, else "written out"
        self.template_source = "tokenizer" if tokenizer_renders_qwen3(tokenizer, config) else "written out"
        #: token counts of the last score() call: real tokens and tokens computed (real + padding)
        self.last_stats: dict[str, int] = {}

    # ---------------------------------------------------------------- construction
    @classmethod
    def load(cls, source: str | Path, *, dtype: str | torch.dtype = "auto", device: str | torch.device | None = None,
             max_length: int | None = None, instruction: str | None = None, gguf_file: str | None = None,
             attn_implementation: str | None = "sdpa") -> Reranker:
        """Load a published Qwen3-Reranker folder, a folder saved by `Reranker.save`, any decoder LLM (folder, hub
        id, .gguf) or `default` (the bundled SmolLM2-135M). `max_length` (default: the folder's, else 8192) caps
        the prompt in tokens; `instruction` replaces the default instruction."""
        folder, gguf_file = loading.resolve_source(source, gguf_file)
        config = RerankerConfig.load(folder) or RerankerConfig()
        changes = {k: v for k, v in {"max_length": max_length, "instruction": instruction}.items() if v is not None}
        if changes:
            config = RerankerConfig(**{**config.model_dump(), **changes})
        if config.max_length < 16:
            raise ValueError(f"max_length must be at least 16 tokens (got {config.max_length})")
        device = resolve_device(device)
        model = load_causal_lm(folder, gguf_file, resolve_dtype(dtype, device), attn_implementation)
        tokenizer = loading.load_tokenizer(folder, gguf_file)
        return cls(model.to(device), tokenizer, config)

    def save(self, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write the sentence-transformers CrossEncoder layout for causal rerankers (LogitScore over the yes/no
        ids, the prompt as a chat template) plus `qzhou_reranker.json`; see `reranking.export`. `state_dict`: the
        full weights where the module holds only a shard (FSDP, DeepSpeed ZeRO-3), keyed as the causal LM's own state
        dict (as `Embedder.save`'s are the backbone's)."""
        from qzhou.reranking.export import save_cross_encoder

        return save_cross_encoder(self, path, state_dict)

    # ---------------------------------------------------------------- properties
    @property
    def max_length(self) -> int:
        return self.config.max_length

    @max_length.setter
    def max_length(self, value: int) -> None:
        self.config = RerankerConfig(**{**self.config.model_dump(), "max_length": int(value)})
        self.tokenizer.model_max_length = int(value)

    @property
    def causal_lm(self) -> nn.Module:
        """The *ForCausalLM itself, also while training wraps it in a peft LoRA model (whose attributes resolve
        differently: `PeftModel.model` is the causal LM, not its decoder)."""
        get_base = getattr(self.model, "get_base_model", None)
        return get_base() if get_base is not None else self.model

    @property
    def decoder(self) -> nn.Module:
        """The decoder stack under the output layer (`model.model` for Llama / Qwen)."""
        lm = self.causal_lm
        return getattr(lm, lm.base_model_prefix)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def info(self) -> dict[str, Any]:
        c = self.model.config
        return {
            "architecture": type(self.model).__name__,
            "model_type": c.model_type,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "layers": getattr(c, "num_hidden_layers", None),
            "max_length": self.max_length,
            "yes_token": [self.config.yes_token, self.yes_id],
            "no_token": [self.config.no_token, self.no_id],
            "instruction": self.config.instruction,
            "template": self.template_source,
            "padding_side": self.padding_side,
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    # ---------------------------------------------------------------- prompts
    def format_pairs(self, pairs: Sequence[tuple[str, str]], instruction: str | None = None, *,
                     max_length: int | None = None) -> list[list[int]]:
        """Token ids of the full prompts. Only the document is truncated (its end is cut), so the template's prefix,
        the instruction, the query and the closing assistant turn always survive within `max_length` (default: the
        reranker's)."""
        return self.prompt_ids(pairs, instruction, max_length)[0]

    def prompt_ids(self, pairs: Sequence[tuple[str, str]], instruction: str | None = None,
                   max_length: int | None = None) -> tuple[list[list[int]], list[int]]:
        """`format_pairs`' ids, and for each prompt the index of the document's first token (where the prefix that
        `score` may reuse ends)."""
        pairs = _check_pairs(pairs)
        max_length = max_length or self.max_length
        if instruction is not None and not instruction.strip():
            raise ValueError("instruction is empty; leave it out to use the default instruction")
        limit = max_length * _CHARS_PER_TOKEN_CUT
        rendered = [self.config.render(q, d[:limit], instruction) for q, d in pairs]
        enc = self.tokenizer([r[0] for r in rendered], add_special_tokens=False, return_offsets_mapping=True,
                             verbose=False)
        out, starts = [], []
        for i, (q, d) in enumerate(pairs):
            fit = _fit(enc["input_ids"][i], enc["offset_mapping"][i], rendered[i][1:], len(d) > limit, i, max_length)
            if fit is None:  # the pre-cut left too few document tokens: tokenize the whole document
                text, start, end = self.config.render(q, d, instruction)
                one = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
                fit = _fit(one["input_ids"], one["offset_mapping"], (start, end), False, i, max_length)
            out.append(fit[0])
            starts.append(fit[1])
        return out, starts

    # ---------------------------------------------------------------- computation
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids and mask -> (B, 2) float32 logits [z_no, z_yes] at each row's last real token: the last
        hidden state times the no and yes rows of the output layer, not the whole vocabulary."""
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = self.decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              use_cache=False).last_hidden_state
        if self.padding_side == "left":
            last = hidden[:, -1]
        else:
            last = hidden[torch.arange(hidden.shape[0], device=hidden.device), attention_mask.sum(1) - 1]
        return self.head(last)

    def head(self, last: torch.Tensor) -> torch.Tensor:
        """(B, hidden) last hidden states -> (B, 2) float32 logits [z_no, z_yes]: only the no and yes rows of the
        output layer (softcapped where the model caps its logits)."""
        head = self.causal_lm.lm_head
        rows = torch.tensor([self.no_id, self.yes_id], device=last.device)
        z = last.float() @ head.weight[rows].float().T
        if getattr(head, "bias", None) is not None:
            z = z + head.bias[rows].float()
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        return cap * torch.tanh(z / cap) if cap else z

    def pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad token-id rows on `padding_side` -> (input_ids, attention_mask) on the model's device."""
        ids, mask = pad_ids(rows, self.tokenizer.pad_token_id, left=self.padding_side == "left")
        return ids.to(self.device), mask.to(self.device)

    @torch.inference_mode()
    def score(self, pairs: Sequence[tuple[str, str]], *, instruction: str | None = None, return_logits: bool = False,
              batch_tokens: int = 16384, show_progress: bool = False,
              prefix_cache: bool = True) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """p(yes) for each (query, document) pair, in input order; with `return_logits`, also the log-odds
        z_yes - z_no (p = sigmoid(log-odds)). Prompts are sorted by length (longest first, so memory peaks at
        once) and packed into batches of at most `batch_tokens` padded tokens: memory stays flat however many
        documents there are.

        `prefix_cache` (default on): the prompt part before the document (system turn, instruction, query) is
        computed once per distinct query, the part all queries share once per call, and the documents run against
        its keys and values (`reranking.prefix_cache`); the same scores as the plain forward, less computation.
        The plain forward runs instead when `prefix_cache=False`, when no prompt shares a prefix with another, or
        when the model's attention cannot reuse one as it is (sliding window, linear attention, flash attention;
        `supports_prefix_cache` says why). `last_stats`: real / computed / prompt / reused token counts."""
        if batch_tokens < 1:
            raise ValueError(f"batch_tokens must be positive (got {batch_tokens})")
        self.model.eval()
        ids, starts = self.prompt_ids(pairs, instruction, None)
        out, self.last_stats = self.forward_prompts(ids, starts, [q for q, _ in pairs], batch_tokens,
                                                      show_progress, prefix_cache)
        log_odds = out[:, 1] - out[:, 0]
        p_yes = torch.sigmoid(log_odds).numpy()
        return (p_yes, log_odds.numpy()) if return_logits else p_yes

    def forward_prompts(self, ids: Sequence[Sequence[int]], starts: Sequence[int], queries: Sequence[str],
                        batch_tokens: int = 16384, show_progress: bool = False,
                        prefix_cache: bool = True) -> tuple[torch.Tensor, dict[str, int]]:
        """(N, 2) float32 logits [z_no, z_yes] of prompts as `prompt_ids` makes them (`starts`: each one's first
        document token; `queries`: a key per prompt, equal for prompts that may share a prefix) and the token
        counts, through the prefix cache where it saves work. `score` and the server's rerank batches call it."""
        from tqdm.auto import tqdm

        from qzhou.reranking import prefix_cache as pc

        root, groups = pc.plan(ids, starts, queries)
        if prefix_cache and pc.supports_prefix_cache(self.causal_lm) is None and pc.reused_tokens(ids, root, groups):
            with tqdm(total=len(ids), desc="rerank", unit="pair", disable=not show_progress) as bar:
                return pc.score_with_prefixes(self.decoder, self.head, ids, root, groups,
                                              pad_id=self.tokenizer.pad_token_id, device=self.device,
                                              batch_tokens=batch_tokens, max_batch_size=MAX_BATCH_SIZE, bar=bar)
        out, stats = forward_in_batches(ids, lambda rows: self(*self.pad(rows)), 2, batch_tokens=batch_tokens,
                                        max_batch_size=MAX_BATCH_SIZE, desc="rerank", unit="pair",
                                        show_progress=show_progress)
        return out, {**stats, "prompt_tokens": stats["real_tokens"], "reused_tokens": 0}

    def rank(self, query: str, docs: Sequence[str], *, top_k: int | None = None, instruction: str | None = None,
             batch_tokens: int = 16384, show_progress: bool = False) -> list[dict[str, Any]]:
        """`docs` best first: [{"index": i, "score": p_yes, "logit": log_odds}], the first `top_k` (default all).
        Sorted by the log-odds, which still separate documents whose p(yes) rounds to 1.0."""
        if isinstance(docs, str):
            raise TypeError("docs must be a list of strings, not one string")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be positive (got {top_k})")
        p, z = self.score([(query, d) for d in docs], instruction=instruction, return_logits=True,
                          batch_tokens=batch_tokens, show_progress=show_progress)
        order = sorted(range(len(docs)), key=lambda i: -z[i])[:top_k]
        return [{"index": i, "score": float(p[i]), "logit": float(z[i])} for i in order]


def _fit(ids: list[int], offsets: list[tuple[int, int]], span: tuple[int, int], cut: bool, i: int,
         max_length: int) -> tuple[list[int], int] | None:
    """Drop the document's last tokens until the prompt fits -> (ids, index of the document's first token); None
    when a pre-cut document might be too short."""
    start, end = span
    if len(ids) <= max_length and not cut:
        return list(ids), next((t for t, (_, b) in enumerate(offsets) if b > start), len(ids))
    inside = [t for t, (a, b) in enumerate(offsets) if b > start and a < end]
    first, stop = inside[0], inside[-1] + 1
    budget = max_length - (len(ids) - (stop - first))
    if budget < 1:
        raise ValueError(f"pair {i}: the template, instruction and query take {len(ids) - (stop - first)} tokens, "
                         f"leaving no room for the document within max_length={max_length}; shorten the query or "
                         "raise max_length")
    if cut and stop - first < budget + _CUT_MARGIN:
        return None
    return list(ids[:first + budget]) + list(ids[stop:]), first


def _check_pairs(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    if isinstance(pairs, tuple) and len(pairs) == 2 and all(isinstance(x, str) for x in pairs):
        raise TypeError("pairs must be a list of (query, document) tuples; wrap a single pair in a list")
    out = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"pair {i} is {type(pair).__name__}, not a (query, document) tuple")
        q, d = pair
        for name, text in (("query", q), ("document", d)):
            if not isinstance(text, str):
                raise TypeError(f"pair {i}: the {name} is {type(text).__name__}, not str")
            if not text.strip():
                raise ValueError(f"pair {i}: the {name} is empty; a reranker needs text on both sides")
        out.append((q, d))
    return out


def load_causal_lm(folder: Path, gguf_file: str | None, dtype: torch.dtype,
                   attn_implementation: str | None = None) -> nn.Module:
    """The *ForCausalLM (with its output layer), built from `model_type`, never from remote code (the embedder's
    loader, `loading.load_native`). A folder saved without the output layer loads when the model ties it to the
    input embeddings (SmolLM2, Qwen3-0.6B)."""
    from transformers import AutoModelForCausalLM

    from qzhou.modeling.bidirectional import architecture_kind

    config = loading.model_config(folder, gguf_file)
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        raise ValueError(f"{folder} holds a {archs[0]} (a seq-cls export): load the causal reranker it came from")
    if architecture_kind(config.model_type) != "decoder":
        raise ValueError(f"{folder}: model_type={config.model_type!r} is an encoder; a yes/no reranker needs a "
                         "decoder LLM (Qwen2/Qwen3/Llama)")
    model, info = loading.load_native(AutoModelForCausalLM, folder, config, gguf_file, dtype, attn_implementation)
    tied = getattr(config, "tie_word_embeddings", False)
    if any(k.startswith("lm_head") for k in info.get("missing_keys", [])) and not tied:
        raise ValueError(f"{folder}: the weights have no lm_head (output layer) and the model does not tie it to "
                         "the embeddings; a reranker needs the LM head of a *ForCausalLM checkpoint")
    return model
