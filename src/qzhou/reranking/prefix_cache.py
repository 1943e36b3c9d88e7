"""Prefix KV reuse for `Reranker.score`: the decoder is causal, so a prompt's first tokens give the same keys and
values whatever follows them. Every Qwen3-Reranker prompt is `<system turn + instruction + query>` followed by
`<document + closing assistant turn>`: documents ranked for one query share the whole first part token for token,
and with one instruction every prompt shares the system turn and the instruction.

So the shared part is computed once and each document's continuation runs against its cache: the common prefix
of all prompts (the root) first (batch 1), then the queries' remainders on top of it (one batch per chunk of
queries), then the documents in token-budget batches, across queries, right-padded, each row with its query's
keys and values gathered into the batch and the padding inside the prefix masked out. The prompts' token ids are not
changed, only split (where a query's prompts stop sharing ids, at the latest at the first token of the document as
`Reranker.format_pairs` finds it from the offsets), and a prefix is shared only by prompts whose ids before the
split are equal, so the scores are those of the plain forward up to float summation order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from qzhou.modeling.embedder import pad_ids, token_batches

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


@dataclass
class Prefixes:
    """The keys and values of a chunk of query prefixes (root + each query's part, right-padded): per layer
    (G, kv heads, P, head dim), the (G, P) mask of their real tokens and each one's length in tokens."""

    kv: KV | None
    mask: torch.Tensor | None
    lengths: list[int]


def extend_many(decoder: torch.nn.Module, root_kv: KV | None, root_len: int, parts: Sequence[Sequence[int]],
                pad_id: int, device: torch.device) -> Prefixes:
    """Each query's part after the root, all in one forward on the root's cache expanded over them (right-padded;
    a query whose prefix is the root alone gets a row of padding, masked out)."""
    from transformers import DynamicCache

    g, lengths = len(parts), [root_len + len(x) for x in parts]
    root_mask = torch.ones(g, root_len, dtype=torch.long, device=device)
    if max(map(len, parts)) == 0:
        kv = [(k.expand(g, -1, -1, -1), v.expand(g, -1, -1, -1)) for k, v in root_kv] if root_kv else None
        return Prefixes(kv, root_mask if root_kv else None, lengths)
    ids, mask = pad_ids(parts, pad_id, left=False)
    ids, mask = ids.to(device), torch.cat([root_mask, mask.to(device)], dim=1)
    cache = DynamicCache(ddp_cache_data=[(k.expand(g, -1, -1, -1), v.expand(g, -1, -1, -1)) for k, v in root_kv or []])
    positions = torch.arange(root_len, root_len + ids.shape[1], device=device).unsqueeze(0).expand(g, -1)
    decoder(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
    return Prefixes([(layer.keys, layer.values) for layer in cache.layers], mask, lengths)


def continue_batch(decoder: torch.nn.Module, prefixes: Prefixes, which: Sequence[int], rows: Sequence[Sequence[int]],
                   pad_id: int, device: torch.device) -> torch.Tensor:
    """(B, hidden) last hidden state at each row's last real token, row j following prefix `which[j]`: right-padded,
    mask = the prefix's mask + the row's own, positions continuing from the prefix's length."""
    from transformers import DynamicCache

    ids, mask = pad_ids(rows, pad_id, left=False)
    ids, mask = ids.to(device), mask.to(device)
    b = ids.shape[0]
    pick = torch.tensor(list(which), dtype=torch.long, device=device)
    cache = DynamicCache(ddp_cache_data=[(k.index_select(0, pick), v.index_select(0, pick))
                                         for k, v in prefixes.kv or []])
    if prefixes.mask is not None:
        mask_all = torch.cat([prefixes.mask.index_select(0, pick), mask], dim=1)
    else:
        mask_all = mask
    start = torch.tensor([prefixes.lengths[w] for w in which], dtype=torch.long, device=device)
    positions = start.unsqueeze(1) + torch.arange(ids.shape[1], device=device).unsqueeze(0)
    hidden = decoder(input_ids=ids, attention_mask=mask_all, position_ids=positions, cache=cache,
                     use_cache=True).last_hidden_state
    return hidden[torch.arange(b, device=device), mask.sum(1) - 1]


def score_with_prefixes(decoder: torch.nn.Module, head: Callable[[torch.Tensor], torch.Tensor],
                        ids: Sequence[Sequence[int]], root: list[int], groups: dict[tuple[int, ...], list[int]], *,
                        pad_id: int, device: torch.device, batch_tokens: int, max_batch_size: int,
                        bar: Any) -> tuple[torch.Tensor, dict[str, int]]:
    """(N, 2) float32 CPU logits of `head` over the last hidden states, in input order, and the token counts; `root`
    and `groups` as `plan` makes them. The root once (batch 1); then queries in chunks of at most `batch_tokens`
    prefix tokens, their parts in one forward; then the chunk's documents, longest first, across queries, in
    batches of at most `batch_tokens` tokens counting the prefix each row attends to (memory stays flat). Few,
    large forwards: a small one costs nearly as much as a large one where reading the weights dominates (CPU)."""
    root_kv = extend(decoder, None, root, device) if root else None
    out = torch.empty(len(ids), 2, dtype=torch.float32)
    real = computed = len(root)
    for chunk in _chunks(sorted(groups, key=len, reverse=True), batch_tokens, max_batch_size):
        parts = [key[len(root):] for key in chunk]
        prefixes = extend_many(decoder, root_kv, len(root), parts, pad_id, device)
        real += sum(map(len, parts))
        computed += len(parts) * max(map(len, parts))
        which = {i: g for g, key in enumerate(chunk) for i in groups[key]}
        rows = {i: ids[i][len(chunk[g]):] for i, g in which.items()}
        past = len(root) + max(map(len, parts))
        # each row counts with the `past` prefix tokens it attends to (their keys and values are expanded over the batch)
        widths = {i: past + len(r) for i, r in rows.items()}
        for batch in token_batches(sorted(rows, key=lambda i: -widths[i]), widths, batch_tokens, max_batch_size):
            conts = [rows[i] for i in batch]
            last = continue_batch(decoder, prefixes, [which[i] for i in batch], conts, pad_id, device)
            out[torch.tensor(batch)] = head(last).float().cpu()
            real += sum(len(c) for c in conts)
            computed += len(conts) * max(len(c) for c in conts)
            bar.update(len(batch))
    prompt = sum(len(r) for r in ids)
    return out, {"real_tokens": real, "computed_tokens": computed, "prompt_tokens": prompt,
                 "reused_tokens": prompt - real}


def _chunks(keys: list[tuple[int, ...]], batch_tokens: int, max_batch_size: int):
    """Query prefixes (longest first) in chunks of at most `batch_tokens` padded prefix tokens."""
    chunk: list[tuple[int, ...]] = []
    for key in keys:
        if chunk and ((len(chunk) + 1) * len(chunk[0]) > batch_tokens or len(chunk) >= max_batch_size):
            yield chunk
            chunk = []
        chunk.append(key)
    if chunk:
        yield chunk
