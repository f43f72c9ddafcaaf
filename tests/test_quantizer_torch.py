"""Split RVQ parity with Kyutai's PyTorch ``SplitResidualVectorQuantizer`` (moshi)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amylm_jax.config import QuantizerConfig
from amylm_jax.models.quantizer import SplitResidualVQ

torch = pytest.importorskip("torch")
moshi_vq = pytest.importorskip("moshi.quantization")

pytestmark = pytest.mark.torch

CFG = QuantizerConfig(
    dimension=16, input_dimension=32, output_dimension=32, bins=64, n_q=6, num_codebooks=4
)
B, T = 2, 13


def build_pair(seed: int):
    """A moshi quantizer with random buffers and the JAX variables holding the same values."""
    torch.manual_seed(seed)
    tq = moshi_vq.SplitResidualVectorQuantizer(
        n_q=CFG.n_q,
        n_q_semantic=CFG.n_q_first,
        dimension=CFG.dimension,
        input_dimension=CFG.input_dimension,
        output_dimension=CFG.output_dimension,
        bins=CFG.bins,
    )
    tq.set_num_codebooks(CFG.num_codebooks)
    model = SplitResidualVQ(CFG)
    variables = model.init({"params": jax.random.key(0)}, jnp.zeros((B, T, 32)), train=False)
    params, codebooks = {}, {}
    for sub, n in (("rvq_first", CFG.n_q_first), ("rvq_rest", CFG.n_q_rest)):
        trvq = getattr(tq, sub)
        params[sub] = {  # Conv1d 1x1 weight [O, I, 1] -> Dense kernel [I, O]
            "input_proj": {"kernel": jnp.asarray(trvq.input_proj.weight.detach()[:, :, 0].T)},
            "output_proj": {"kernel": jnp.asarray(trvq.output_proj.weight.detach()[:, :, 0].T)},
        }
        codebooks[sub] = {}
        for l in range(n):
            cb = trvq.vq.layers[l]._codebook
            with torch.no_grad():
                cb.cluster_usage.copy_(torch.rand(CFG.bins) * 2 + 0.1)
                cb.embedding_sum.copy_(torch.randn(CFG.bins, CFG.dimension))
                cb._initialized.fill_(1.0)
            codebooks[sub][f"layers_{l}"] = {
                "embedding_sum": jnp.asarray(cb.embedding_sum.numpy()),
                "cluster_usage": jnp.asarray(cb.cluster_usage.numpy()),
                "initialized": jnp.float32(1.0),
                "countdown": jnp.int32(CFG.check_unused_every),
            }
    variables = {"params": params, "codebooks": codebooks}
    emb = torch.randn(B, CFG.input_dimension, T)
    return tq, model, variables, emb


def test_encode_decode_match_moshi():
    tq, model, variables, emb = build_pair(0)
    tq.eval()
    with torch.no_grad():
        t_codes = tq.encode(emb).numpy()
        t_dec = tq.decode(torch.from_numpy(t_codes)).numpy()
        t_dec1 = tq.decode(torch.from_numpy(t_codes[:, :1])).numpy()
        t_dec3 = tq.decode(torch.from_numpy(t_codes[:, :3])).numpy()
        t_fwd = tq(emb, 12.5).x.numpy()
    emb_j = jnp.asarray(emb.numpy().transpose(0, 2, 1))
    codes = model.apply(variables, emb_j, method=SplitResidualVQ.encode)
    assert codes.shape == (B, CFG.num_codebooks, T) and codes.dtype == jnp.int32
    np.testing.assert_array_equal(codes, t_codes)
    for k, t_out in ((4, t_dec), (1, t_dec1), (3, t_dec3)):
        dec = model.apply(variables, codes[:, :k], method=SplitResidualVQ.decode)
        np.testing.assert_allclose(dec, t_out.transpose(0, 2, 1), rtol=1e-5, atol=1e-5)
    sem = model.apply(variables, codes, method=SplitResidualVQ.decode_semantic)
    np.testing.assert_allclose(sem, t_dec1.transpose(0, 2, 1), rtol=1e-5, atol=1e-5)
    out = model.apply(variables, emb_j, train=False)
    np.testing.assert_allclose(out.x, t_fwd.transpose(0, 2, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out.codes, t_codes)


def test_training_steps_match_moshi():
    """Three training calls (no k-means, no expiry yet): buffers, codes, outputs, metrics."""
    tq, model, variables, _ = build_pair(1)
    tq.train()

    @jax.jit
    def step(v, emb):
        out, upd = model.apply(v, emb, train=True, rng=jax.random.key(0), mutable=["codebooks"])
        return out, {**v, **upd}

    for call in range(3):
        emb = torch.randn(B, CFG.input_dimension, T)
        t_first = tq.rvq_first(emb, 12.5)
        t_rest = tq.rvq_rest(emb, 12.5)
        out, variables = step(variables, jnp.asarray(emb.numpy().transpose(0, 2, 1)))
        for res, t_res, sub, n in (
            (out.first, t_first, "rvq_first", 2),
            (out.rest, t_rest, "rvq_rest", 2),
        ):
            np.testing.assert_array_equal(res.codes, t_res.codes.numpy(), err_msg=f"{call}")
            x_t = t_res.x.detach().numpy().transpose(0, 2, 1)
            np.testing.assert_allclose(res.x, x_t, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(res.penalty, float(t_res.penalty.detach()), rtol=1e-5)
            off = 0 if sub == "rvq_first" else 2
            for l in range(n):
                cb = getattr(tq, sub).vq.layers[l]._codebook
                jcb = variables["codebooks"][sub][f"layers_{l}"]
                np.testing.assert_allclose(
                    jcb["embedding_sum"], cb.embedding_sum.numpy(), rtol=1e-5, atol=1e-6
                )
                np.testing.assert_allclose(
                    jcb["cluster_usage"], cb.cluster_usage.numpy(), rtol=1e-5, atol=1e-6
                )
                assert int(jcb["countdown"]) == cb._next_unused_check
                t_entropy = float(t_res.metrics[f"rvq_entropy_{l + (1 if off else 0)}"])
                np.testing.assert_allclose(res.metrics[f"entropy_{l + off}"], t_entropy, 1e-5)
