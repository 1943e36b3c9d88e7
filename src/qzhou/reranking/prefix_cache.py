"""Prefix KV reuse for `Reranker.score`: the decoder is causal, so a prompt's first tokens give the same keys and
values whatever follows them. Every Qwen3-Reranker prompt is `<system turn + instruction + query>` followed by
`<document + closing assistant turn>`: documents ranked for one query share the whole first part token for token,
and with one instruction every prompt shares the system turn and the instruction.

So the shared part is computed once (batch 1) and each document's continuation runs against its cache: the
common prefix of all prompts (the root) first, then each query's remainder on top of it, then the documents in
token-budget batches, right-padded, with the query's cache expanded over the batch. The prompts' token ids are not
changed, only split (at the first token of the document, as `Reranker.format_pairs` finds it from the offsets),
and a prefix is shared only by prompts whose ids before the split are equal, so the scores are those of the plain
forward up to float summation order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from qzhou.modeling.embedder import pad_ids

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values, (batch, kv heads, tokens, head dim)


def supports_prefix_cache(model: Any) -> str | None:
    """None when the prefix path can serve `model`, else why not (the plain forward is used then): every layer
    must be full causal attention in a plain `DynamicCache` (no sliding window, linear attention or shared KV),
    and the attention sdpa or eager (the masks this path builds are tested with those)."""
    config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if types != {"full_attention"}:
        return f"layer types {sorted(types)} (only full attention reuses a prefix cache as it is)"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return f"sliding window attention (sliding_window={config.sliding_window})"
    if not getattr(config, "is_causal", True):
        return "bidirectional attention: a prefix depends on what follows it"
    impl = getattr(config, "_attn_implementation", None)
    if impl not in ("sdpa", "eager"):
        return f"attention implementation {impl!r} (the prefix path runs with sdpa or eager)"
    return None


def plan(ids: Sequence[Sequence[int]], starts: Sequence[int],
         queries: Sequence[str]) -> tuple[list[int], dict[tuple[int, ...], list[int]]]:
    """The root (the longest common prefix of all groups' prefixes) and the prompts grouped by query (input order
    kept), keyed by the ids the group's prompts all share up to the latest document start (a tokenizer may join
    the space before a document to its first word or not, so the split can move a token between documents). Only
    equal ids are ever shared, and every continuation keeps at least one token."""
    members: dict[str, list[int]] = {}
    for i, q in enumerate(queries):
        members.setdefault(q, []).append(i)
    groups: dict[tuple[int, ...], list[int]] = {}
    for rows in members.values():
        key = _common_prefix([ids[i] for i in rows], min(max(starts[i] for i in rows),
                                                         min(len(ids[i]) for i in rows) - 1))
        groups.setdefault(tuple(key), []).extend(rows)
    return _common_prefix(list(groups), min(len(k) for k in groups)), groups


def _common_prefix(rows: Sequence[Sequence[int]], cap: int) -> list[int]:
    """The longest prefix (at most `cap` ids) that all `rows` share."""
    first, n = rows[0], 0
    while n < cap and all(r[n] == first[n] for r in rows):
        n += 1
    return list(first[:n])


def reused_tokens(ids: Sequence[Sequence[int]], root: list[int], groups: dict[tuple[int, ...], list[int]]) -> int:
    """Prompt tokens the prefix path does not compute (what it saves over the plain forward)."""
    computed = len(root) + sum(len(key) - len(root) + sum(len(ids[i]) - len(key) for i in rows)
                               for key, rows in groups.items())
    return sum(len(r) for r in ids) - computed


def extend(decoder: torch.nn.Module, kv: KV | None, new_ids: Sequence[int], device: torch.device) -> KV:
    """The keys and values of `kv`'s tokens followed by `new_ids` (batch 1): one forward of `new_ids` only."""
    from transformers import DynamicCache

    cache = DynamicCache(ddp_cache_data=kv) if kv else DynamicCache()
    past = kv[0][0].shape[2] if kv else 0
    ids = torch.tensor([list(new_ids)], dtype=torch.long, device=device)
    positions = torch.arange(past, past + ids.shape[1], device=device).unsqueeze(0)
    mask = torch.ones(1, past + ids.shape[1], dtype=torch.long, device=device)
    decoder(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
    return [(layer.keys, layer.values) for layer in cache.layers]


def continue_batch(decoder: torch.nn.Module, kv: KV | None, rows: Sequence[Sequence[int]], pad_id: int,
                   device: torch.device) -> torch.Tensor:
    """(B, hidden) last hidden state at each row's last real token, the rows following the prefix `kv` (batch 1,
    expanded as views over the batch; None: no prefix): right-padded, mask = ones over the prefix + the rows' own mask, positions
    continuing from the prefix length."""
    from transformers import DynamicCache

    ids, mask = pad_ids(rows, pad_id, left=False)
    ids, mask = ids.to(device), mask.to(device)
    b, past = ids.shape[0], kv[0][0].shape[2] if kv else 0
    cache = DynamicCache(ddp_cache_data=[(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in kv or []])
    full_mask = torch.cat([torch.ones(b, past, dtype=mask.dtype, device=device), mask], dim=1)
    positions = torch.arange(past, past + ids.shape[1], device=device).unsqueeze(0).expand(b, -1)
    hidden = decoder(input_ids=ids, attention_mask=full_mask, position_ids=positions, cache=cache,
                     use_cache=True).last_hidden_state
    return hidden[torch.arange(b, device=device), mask.sum(1) - 1]


def score_with_prefixes(decoder: torch.nn.Module, head: Callable[[torch.Tensor], torch.Tensor],
                        ids: Sequence[Sequence[int]], root: list[int], groups: dict[tuple[int, ...], list[int]], *,
                        pad_id: int, device: torch.device, batch_tokens: int, max_batch_size: int,
                        bar: Any) -> tuple[torch.Tensor, dict[str, int]]:
    """(N, 2) float32 CPU logits of `head` over the last hidden states, in input order, and the token counts; `root`
    and `groups` as `plan` makes them. Query by query (only one query's cache is held besides the root's), its documents longest first in batches
    of at most `batch_tokens` tokens counting the prefix each row attends to (memory stays flat)."""
    root_kv = extend(decoder, None, root, device) if root else None
    out = torch.empty(len(ids), 2, dtype=torch.float32)
    real = computed = len(root)
    for key, members in groups.items():
        kv = extend(decoder, root_kv, key[len(root):], device) if len(key) > len(root) else root_kv
        real += len(key) - len(root)
        computed += len(key) - len(root)
        rows = {i: ids[i][len(key):] for i in members}
        for batch in _batches(sorted(members, key=lambda i: -len(rows[i])), rows, len(key), batch_tokens,
                              max_batch_size):
            conts = [rows[i] for i in batch]
            last = continue_batch(decoder, kv, conts, pad_id, device)
            out[torch.tensor(batch)] = head(last).float().cpu()
            real += sum(len(c) for c in conts)
            computed += len(conts) * max(len(c) for c in conts)
            bar.update(len(batch))
    stats = {"real_tokens": real, "computed_tokens": computed, "prompt_tokens": sum(len(r) for r in ids),
             "reused_tokens": sum(len(r) for r in ids) - real}
    return out, stats


def _batches(order: list[int], rows: dict[int, Sequence[int]], past: int, batch_tokens: int, max_batch_size: int):
    """Split `order` (decreasing continuation length) into batches of at most `batch_tokens` tokens, each row
    counted with the `past` prefix tokens it attends to (their keys and values are expanded over the batch)."""
    batch: list[int] = []
    for i in order:
        width = past + len(rows[batch[0]] if batch else rows[i])
        if batch and ((len(batch) + 1) * width > batch_tokens or len(batch) >= max_batch_size):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch
