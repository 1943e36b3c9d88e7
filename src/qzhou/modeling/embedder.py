"""The one model object used by training, mining, evaluation, encode and serving:
backbone + attention mode + pooling + normalisation + instruction template."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from qzhou.config import EmbedderConfig
from qzhou.modeling import loading
from qzhou.modeling.bidirectional import architecture_kind, set_attention
from qzhou.modeling.pooling import finalize, pool
from qzhou.modeling.runtime import resolve_device, resolve_dtype


class Embedder(nn.Module):
    """A text embedder. Build it with `Embedder.load(...)`; `encode` texts; `save` a folder that
    sentence-transformers and transformers read as they are."""

    def __init__(self, backbone: nn.Module, tokenizer: Any, config: EmbedderConfig):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.config = config
        set_attention(backbone, config.attention)
        loading.prepare_tokenizer(tokenizer, config)
        #: token counts of the last encode() call: real tokens and tokens computed (real + padding)
        self.last_stats: dict[str, int] = {}

    # ---------------------------------------------------------------- construction
    @classmethod
    def load(
        cls,
        source: str | Path,
        *,
        gguf_file: str | None = None,
        attention: Literal["bidirectional", "causal"] | None = None,
        pooling: Literal["mean", "last", "cls"] | None = None,
        max_length: int | None = None,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device | None = None,
        attn_implementation: str | None = "sdpa",
        **overrides: Any,
    ) -> Embedder:
        """Load a base LLM, a published embedder (QZhou, gte-Qwen2, Qwen3-Embedding, any ST folder) or a GGUF
        file. Keyword overrides replace what the folder's files imply (see `loading.detect_config`)."""
        folder, gguf_file = loading.resolve_source(source, gguf_file)
        raw = loading.read_raw_config(folder, gguf_file)
        config = loading.detect_config(folder, raw)
        changes = {k: v for k, v in dict(attention=attention, pooling=pooling, max_length=max_length).items() if v}
        changes.update(overrides)
        if changes:
            merged = {**config.model_dump(), **changes}
            if "pooling" in changes and "append_token" not in changes:
                kind = architecture_kind(raw.get("model_type", "?"))
                merged["append_token"] = loading.ENDOFTEXT if merged["pooling"] == "last" and kind == "decoder" else None
            config = EmbedderConfig(**merged)
        device = resolve_device(device)
        backbone = loading.load_backbone(folder, gguf_file, resolve_dtype(dtype, device), attn_implementation)
        tokenizer = loading.load_tokenizer(folder, gguf_file)
        return cls(backbone.to(device), tokenizer, config)

    def save(self, folder: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Save in the sentence-transformers layout (see `st_format`), with qzhou_config.json beside it.
        `state_dict`: the backbone's full weights where the module holds only a shard (FSDP, DeepSpeed ZeRO-3)."""
        from qzhou.modeling.st_format import save_folder

        return save_folder(folder, self.backbone, self.tokenizer, self.config, state_dict)

    def keep_layers(self, n: int) -> None:
        """Keep the backbone's first `n` transformer layers and drop the rest; the final norm still applies, and the
        config says `n`, so a saved folder reloads as it is. Mid-depth layers of a small LLM embed about as well as
        the last (SmolLM2-135M, causal + mean, zero-shot STS-B: about 48-51 for layers 5-16 with the final norm vs
        37 for all 30; `bench/layer_probe.py`), and half the layers train twice as many steps in the same time."""
        layers = getattr(self.backbone, "layers", None)
        if layers is None:  # encoders (BERT): backbone.encoder.layer
            layers = getattr(getattr(self.backbone, "encoder", None), "layer", None)
        if not isinstance(layers, nn.ModuleList):
            raise ValueError(f"keep_layers: no layer list found on {type(self.backbone).__name__}")
        if not 1 <= n <= len(layers):
            raise ValueError(f"keep_layers: asked for {n} layers, the model has {len(layers)}")
        del layers[n:]
        cfg = self.backbone.config
        cfg.num_hidden_layers = n
        if isinstance(getattr(cfg, "layer_types", None), list):  # per-layer attention kinds (transformers 5)
            cfg.layer_types = cfg.layer_types[:n]

    # ---------------------------------------------------------------- properties
    @property
    def _no_split_modules(self) -> list[str] | None:
        """The backbone's layer classes: FSDP's transformer auto-wrap policy (accelerate) reads them here."""
        return getattr(self.backbone, "_no_split_modules", None)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    @property
    def hidden_size(self) -> int:
        return int(self.backbone.config.hidden_size)

    def info(self) -> dict[str, Any]:
        c = self.backbone.config
        return {
            "architecture": type(self.backbone).__name__,
            "model_type": c.model_type,
            "parameters": sum(p.numel() for p in self.backbone.parameters()),
            "layers": getattr(c, "num_hidden_layers", None),
            "attention": self.config.attention,
            "pooling": self.config.pooling,
            "normalize": self.config.normalize,
            "dimension": self.hidden_size,
            "max_length": self.config.max_length,
            "padding_side": self.config.padding_side,
            "append_token": self.config.append_token,
            "query_template": self.config.query_template,
            "prompts": self.config.prompts(),
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    # ---------------------------------------------------------------- computation
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
        """(B, L) token ids and mask -> (B, D) float32 embeddings (normalised if the config says so)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        return finalize(pool(hidden, attention_mask, self.config.pooling), dim, self.config.normalize)

    def format(self, texts: Sequence[str], prompt_name: str | None = None, instruction: str | None = None) -> list[str]:
        """Apply the query template (`prompt_name='query'` with the default task, or `instruction=TEXT`);
        `prompt_name='document'` or nothing leaves texts exactly as given."""
        if prompt_name is not None and instruction is not None:
            raise ValueError("give prompt_name or instruction, not both")
        if instruction is not None:
            return [self.config.format_query(t, instruction) for t in texts]
        if prompt_name in (None, "document"):
            return list(texts)
        if prompt_name == "query":
            return [self.config.format_query(t) for t in texts]
        raise ValueError(f"unknown prompt_name {prompt_name!r}; known: 'query', 'document'")

    @torch.inference_mode()
    def encode(
        self,
        texts: str | Sequence[str],
        *,
        prompt_name: str | None = None,
        instruction: str | None = None,
        dim: int | None = None,
        batch_tokens: int = 16384,
        max_batch_size: int = 128,
        convert_to: Literal["numpy", "torch"] = "numpy",
        show_progress: bool | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Embed texts; rows come back in input order.

        Texts are tokenized once, sorted by length (longest first, so memory peaks at once) and packed into
        batches of at most `batch_tokens` padded tokens, which keeps padding small and memory bounded.
        """
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if dim is not None and not 1 <= dim <= self.hidden_size:
            raise ValueError(f"dim must be between 1 and the hidden size {self.hidden_size} (got {dim})")
        ids, truncated = self._tokenize(texts, prompt_name, instruction)
        self.backbone.eval()
        left = self.tokenizer.padding_side == "left"

        def run(rows: list[Sequence[int]]) -> torch.Tensor:
            input_ids, mask = pad_ids(rows, self.tokenizer.pad_token_id, left=left)
            return self(input_ids.to(self.device), mask.to(self.device), dim)

        show = show_progress if show_progress is not None else len(ids) >= 2000
        out, self.last_stats = forward_in_batches(ids, run, dim or self.hidden_size, batch_tokens=batch_tokens,
                                                  max_batch_size=max_batch_size, desc="encode", unit="text",
                                                  show_progress=show)
        self.last_stats["truncated"] = truncated
        result = out[0] if single else out
        return result.numpy() if convert_to == "numpy" else result

    def tokenize(self, texts: Sequence[str], *, prompt_name: str | None = None, instruction: str | None = None,
                 truncate: bool = True) -> list[list[int]]:
        """The token ids `encode` feeds the model (template applied, `append_token` added, cut to max_length).
        Separate from the forward so that a server can tokenize off its model thread and batch token lists from
        many requests (`pooled_ids`). `truncate=False`: a text over max_length is an error instead of cut."""
        if truncate:
            return self._tokenize(texts, prompt_name, instruction)[0]
        self._check_texts(texts)
        ids = self.tokenizer(self.format(texts, prompt_name, instruction))["input_ids"]
        for i, x in enumerate(ids):
            if len(x) > self.config.max_length:
                raise ValueError(f"text {i} has {len(x)} tokens, over the max length {self.config.max_length}; "
                                 "shorten it or allow truncation")
        return ids

    def _tokenize(self, texts: Sequence[str], prompt_name: str | None,
                  instruction: str | None) -> tuple[list[list[int]], int]:
        """-> (ids cut to max_length, how many texts were cut), in one tokenizer pass: the tokenizer returns what it
        cut (overflow rows with their source row, fast tokenizers; `overflowing_tokens`, slow ones), so counting
        needs no second, untruncated pass over the corpus. Thread-safe (no state kept), for the server."""
        self._check_texts(texts)
        enc = self.tokenizer(self.format(texts, prompt_name, instruction), truncation=True,
                             max_length=self.config.max_length, return_overflowing_tokens=True)
        source = enc.get("overflow_to_sample_mapping")
        if source is None:
            return enc["input_ids"], sum(bool(rest) for rest in enc.get("overflowing_tokens", []))
        first = [j for j, row in enumerate(source) if j == 0 or source[j - 1] != row]  # one row per text: its start
        rows_per_text = np.diff([*first, len(source)])
        return [enc["input_ids"][j] for j in first], int((rows_per_text > 1).sum())

    @staticmethod
    def _check_texts(texts: Sequence[str]) -> None:
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text {i} is {type(t).__name__}, not str")
            if not t.strip():
                raise ValueError(f"text {i} is empty; embedders need at least one real token")

    @torch.inference_mode()
    def pooled_ids(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """One padded forward over token-id lists -> (B, hidden) float32 pooled vectors on the CPU, before
        Matryoshka truncation and normalisation (`pooling.finalize` does both, per caller). Pads by hand with the
        tokenizer's pad id and side, so it never touches the tokenizer another thread may be using."""
        self.backbone.eval()
        input_ids, mask = pad_ids(ids, self.tokenizer.pad_token_id, left=self.tokenizer.padding_side == "left")
        mask = mask.to(self.device)
        hidden = self.backbone(input_ids=input_ids.to(self.device), attention_mask=mask).last_hidden_state
        return pool(hidden, mask, self.config.pooling).cpu()


def pad_ids(rows: Sequence[Sequence[int]], pad_id: int, *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows padded to the longest with `pad_id`, on the left or the right -> (input_ids, attention_mask),
    both (B, L) long on the CPU. Written by hand (not `tokenizer.pad`) so that a server thread can pad while
    another tokenizes; `Embedder.pooled_ids` and `Reranker.pad` both use it."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        cols = slice(width - len(r), width) if left else slice(0, len(r))
        ids[j, cols] = torch.tensor(list(r), dtype=torch.long)
        mask[j, cols] = 1
    return ids, mask


def forward_in_batches(ids: Sequence[Sequence[int]], run: Callable[[list[Sequence[int]]], torch.Tensor], width: int, *,
                       batch_tokens: int, max_batch_size: int, desc: str, unit: str,
                       show_progress: bool) -> tuple[torch.Tensor, dict[str, int]]:
    """(N, width) float32 CPU rows of `run(token-id rows)` in input order, and the token counts (real, and computed
    = real + padding). Rows are sorted longest first (so memory peaks at once) and packed into batches of at most
    `batch_tokens` padded tokens (`token_batches`). The loop of `Embedder.encode` and `Reranker.score`."""
    from tqdm.auto import tqdm

    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    lengths = [len(x) for x in ids]
    out = torch.empty(len(ids), width, dtype=torch.float32)
    real = computed = 0
    bar = tqdm(total=len(ids), desc=desc, unit=unit, disable=not show_progress)
    for batch in token_batches(order, lengths, batch_tokens, max_batch_size):
        out[torch.tensor(batch)] = run([ids[i] for i in batch]).cpu()
        real += sum(lengths[i] for i in batch)
        computed += len(batch) * max(lengths[i] for i in batch)
        bar.update(len(batch))
    bar.close()
    return out, {"real_tokens": real, "computed_tokens": computed}


def token_batches(order: list[int], lengths: list[int], batch_tokens: int, max_batch_size: int):
    """Split `order` (sorted by decreasing length) into batches whose padded size stays within budget."""
    batch: list[int] = []
    for i in order:
        width = lengths[batch[0]] if batch else lengths[i]
        if batch and ((len(batch) + 1) * width > batch_tokens or len(batch) >= max_batch_size):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch
