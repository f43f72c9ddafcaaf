"""``quantizer.prosody_topology="parallel"``: codebook 1 from its own quantizer on the latent.

In the parallel topology ``rvq_first`` holds codebook 0 alone and ``rvq_prosody`` (its own
projections and codebook) quantises the same latent; ``x_sp`` is the sum of the two outputs.
Checked against the two sub-quantizers run on their own, through encode/decode, a training
step, the metric names, and the PyTorch layouts.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from step_helpers import SMALL_DISC, make, make_batch, random_quantizer_variables

from amylm_jax.config import QuantizerConfig, TrainConfig, tiny_codec_config
from amylm_jax.export import hf_layout
from amylm_jax.export.from_torch import flax_to_torch, torch_to_flax
from amylm_jax.export.torch_layout import is_prosody_key
from amylm_jax.metrics import codebook_usage
from amylm_jax.models.amy_codec import AmyCodec
from amylm_jax.models.quantizer import ResidualVQ, SplitResidualVQ
from amylm_jax.steps import train_step

CFG = QuantizerConfig(
    dimension=16, input_dimension=32, output_dimension=32, bins=64, n_q=6, num_codebooks=4,
    prosody_topology="parallel",
)  # fmt: skip
B, T = 2, 8


def _initialised(model, seed=0):
    """Variables with every active codebook initialised to random centroids."""
    return random_quantizer_variables(model, CFG, B, T, seed)


def test_config_validates_the_topology():
    assert [s[0] for s in CFG.sub_quantizers()] == ["rvq_first", "rvq_prosody", "rvq_rest"]
    assert [s[2] for s in CFG.sub_quantizers()] == [0, 1, 2]
    with pytest.raises(ValueError, match="'residual' or 'parallel'"):
        dataclasses.replace(CFG, prosody_topology="serial")
    with pytest.raises(ValueError, match="n_q_first=2"):
        dataclasses.replace(CFG, n_q_first=3)


def test_parallel_codebooks_quantise_the_same_latent():
    model = SplitResidualVQ(CFG)
    v, emb = _initialised(model)
    assert set(v["params"]) == {"rvq_first", "rvq_prosody", "rvq_rest"}
    assert set(v["codebooks"]["rvq_first"]) == {"layers_0"}
    out = model.apply(v, emb, train=False)
    codes = model.apply(v, emb, method=SplitResidualVQ.encode)
    np.testing.assert_array_equal(out.codes, codes)
    assert codes.shape == (B, CFG.num_codebooks, T)
    # each one-codebook quantizer on its own, on the same emb
    for g, name, offset in ((0, "rvq_first", 0), (1, "rvq_prosody", 1)):
        alone = ResidualVQ(CFG, n_q=1, n_active=1, codebook_offset=offset)
        sub = {"params": v["params"][name], "codebooks": v["codebooks"][name]}
        ref = alone.apply(sub, emb, train=False)
        np.testing.assert_array_equal(codes[:, g], ref.codes[:, 0])
        assert f"usage_{g}" in out.metrics
    sem = ResidualVQ(CFG, n_q=1, n_active=1).apply(
        {"params": v["params"]["rvq_first"], "codebooks": v["codebooks"]["rvq_first"]},
        emb, train=False,
    )  # fmt: skip
    pros = ResidualVQ(CFG, n_q=1, n_active=1, codebook_offset=1).apply(
        {"params": v["params"]["rvq_prosody"], "codebooks": v["codebooks"]["rvq_prosody"]},
        emb, train=False,
    )  # fmt: skip
    np.testing.assert_allclose(out.first.x, sem.x + pros.x, rtol=1e-5, atol=1e-6)
    # decode(encode) is the eval forward; a prefix decode drops codebook 1, then the rest
    decoded = model.apply(v, codes, method=SplitResidualVQ.decode)
    np.testing.assert_allclose(decoded, out.x, rtol=1e-5, atol=1e-5)
    only0 = model.apply(v, codes[:, :1], method=SplitResidualVQ.decode)
    np.testing.assert_allclose(only0, sem.x, rtol=1e-5, atol=1e-6)
    both = model.apply(v, codes[:, :2], method=SplitResidualVQ.decode)
    np.testing.assert_allclose(both, out.first.x, rtol=1e-5, atol=1e-6)


def test_parallel_training_step_updates_both_codebooks():
    codec = tiny_codec_config(quantizer=CFG)
    models, state = make(TrainConfig(codec=codec, disc=SMALL_DISC))
    step = jax.jit(lambda s, b: train_step(models, s, b))
    state, metrics = step(state, make_batch(2, seed=1))
    state, metrics = step(state, make_batch(2, seed=2))
    books = state.codebooks["quantizer"]
    for name in ("rvq_first", "rvq_prosody"):
        assert float(books[name]["layers_0"]["initialized"]) == 1.0, name
    for g in range(CFG.num_codebooks):
        assert f"train/codebook/usage_{g}" in metrics and f"train/codebook/entropy_{g}" in metrics
    assert all(np.isfinite(float(v)) for v in metrics.values() if np.ndim(v) == 0)
    usage = codebook_usage(jax.device_get(state.codebooks), models.cfg)
    assert sorted(usage) == [f"val/codebook/usage_{g}" for g in range(CFG.num_codebooks)]


def test_parallel_torch_layouts():
    codec = tiny_codec_config(quantizer=CFG)
    v = AmyCodec(codec).init(
        {"params": jax.random.key(0), "quantizer": jax.random.key(1)},
        jnp.zeros((1, 1920), jnp.float32), train=False,
    )  # fmt: skip
    amy = flax_to_torch(v, codec, "amy")
    prosody = sorted(k for k in amy if k.startswith("quantizer.rvq_prosody."))
    assert "quantizer.rvq_prosody.input_proj.weight" in prosody
    assert "quantizer.rvq_prosody.vq.layers.0._codebook.embedding_sum" in prosody
    assert not any(k.startswith("quantizer.rvq_first.vq.layers.1.") for k in amy)
    back, report = torch_to_flax(amy, codec)
    assert report.missing == () and report.unexpected == ()
    for a, b in zip(jax.tree_util.tree_leaves(back["params"]),
                    jax.tree_util.tree_leaves(v["params"]), strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)
    kyutai = flax_to_torch(v, codec, "kyutai")
    assert set(amy) - set(kyutai) == set(prosody) and all(is_prosody_key(k) for k in prosody)
    # a Kyutai file into a parallel codec: the prosody quantizer comes from the base (random)
    loaded, report = torch_to_flax(kyutai, codec, base=v)
    assert set(report.missing) == set(prosody)
    with pytest.raises(ValueError, match="parallel"):
        hf_layout.check_expressible(codec)
