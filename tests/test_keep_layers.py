"""`model.layers`: an embedder cut to its first N layers embeds as the full model's N-th hidden state would (the
final norm applied, then the pooling), trains, and saves a folder that reloads with N layers."""

from __future__ import annotations

import pytest
import torch
import yaml
from test_trainer import recipe, sent

from qzhou import Embedder
from qzhou.modeling.pooling import finalize, pool
from qzhou.training.recipe import load_recipe
from qzhou.training.trainer import train


@pytest.mark.parametrize("arch,attention,pooling", [("qwen2", "bidirectional", "mean"), ("qwen3", "causal", "last"),
                                                    ("bert", None, "cls")])
def test_cut_model_embeds_as_the_full_models_hidden_state(base_dirs, arch, attention, pooling):
    kw = {k: v for k, v in (("attention", attention), ("pooling", pooling)) if v}
    full = Embedder.load(base_dirs[arch], dtype="float32", device="cpu", **kw).eval()
    cut = Embedder.load(base_dirs[arch], dtype="float32", device="cpu", **kw).eval()
    cut.keep_layers(1)
    assert cut.backbone.config.num_hidden_layers == 1
    batch = full.tokenizer([sent(i, 2 + i) for i in range(4)], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = full.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            output_hidden_states=True)
        hidden = out.hidden_states[1]  # after layer 1, before the final norm (decoders have one; BERT does not)
        if hasattr(full.backbone, "norm"):
            hidden = full.backbone.norm(hidden)
        want = finalize(pool(hidden, batch["attention_mask"], full.config.pooling), None, True)
        got = cut(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="asked for 3 layers, the model has 1"):
        cut.keep_layers(3)


def test_trained_cut_model_saves_and_reloads(tmp_path, base_dirs):
    path = recipe(tmp_path, base_dirs["qwen2"])
    raw = yaml.safe_load(path.read_text())
    raw["model"]["layers"] = 1
    raw["checkpoint_every"] = 2
    path.write_text(yaml.safe_dump(raw))
    final = train(load_recipe(path))
    e = Embedder.load(final, dtype="float32")
    assert e.backbone.config.num_hidden_layers == 1 and len(e.backbone.layers) == 1
    assert e.encode([sent(1)]).shape == (1, 64)
    raw["model"]["layers"] = 3
    path.write_text(yaml.safe_dump(raw | {"output_dir": str(tmp_path / "other")}))
    with pytest.raises(ValueError, match="asked for 3 layers, the model has 2"):
        train(load_recipe(path))
