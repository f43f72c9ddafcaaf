"""MS-STFT discriminator: shapes (docs/original.md §5.2), weight norm, init, key map and PyTorch
parity."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from amylm_jax.export.disc_layout import disc_from_torch, disc_to_torch
from amylm_jax.models.discriminator import MultiScaleSTFTDiscriminator, weight_norm_kernel
from amylm_jax.reference.torch_losses import TorchMSSTFTDiscriminator

# (M, fmap widths c0..c4) per sub-discriminator for N = 24000 (docs/original.md §5.2 table)
TABLE = [
    (90, (513, 257, 129, 65, 65)),
    (43, (1025, 513, 257, 129, 129)),
    (184, (257, 129, 65, 33, 33)),
    (372, (129, 65, 33, 17, 17)),
    (747, (65, 33, 17, 9, 9)),
]


@pytest.fixture(scope="module")
def disc_and_params():
    disc = MultiScaleSTFTDiscriminator()
    params = jax.jit(disc.init)(jax.random.key(0), jnp.zeros((1, 2048)))["params"]
    return disc, params


def test_shapes_for_one_second():
    x = jax.ShapeDtypeStruct((2, 24000), jnp.float32)
    (logits, fmaps), _ = jax.eval_shape(
        MultiScaleSTFTDiscriminator().init_with_output, jax.random.key(0), x
    )
    assert len(logits) == len(fmaps) == 5
    for (m, widths), lg, fm in zip(TABLE, logits, fmaps, strict=True):
        assert lg.shape == (2, m, widths[-1], 1) and lg.dtype == jnp.float32
        assert [f.shape for f in fm] == [(2, m, w, 32) for w in widths]
        assert all(f.dtype == jnp.float32 for f in fm)


def test_param_tree_and_init(disc_and_params):
    _, params = disc_and_params
    assert sorted(params) == [f"discs_{k}" for k in range(5)]
    for disc in params.values():
        assert sorted(disc) == ["conv_post"] + [f"convs_{i}" for i in range(5)]
        assert sorted(disc["convs_0"]) == ["bias", "kernel"]  # no weight norm on c0
        assert disc["convs_0"]["kernel"].shape == (3, 9, 2, 32)
        for name in ["convs_1", "convs_2", "convs_3", "convs_4", "conv_post"]:
            leaf = disc[name]
            assert sorted(leaf) == ["bias", "kernel_g", "kernel_v"]
            v, g = np.asarray(leaf["kernel_v"]), np.asarray(leaf["kernel_g"])
            # g = ||v|| per output channel at init, so W = v
            np.testing.assert_allclose(g, np.sqrt((v**2).sum(axis=(0, 1, 2))), rtol=1e-6)
            np.testing.assert_allclose(np.asarray(weight_norm_kernel(v, g)), v, atol=1e-7)
        # PyTorch default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for kernels and biases
        for leaf in disc.values():
            k = leaf.get("kernel", leaf.get("kernel_v"))
            bound = 1 / math.sqrt(np.prod(k.shape[:3]))
            for arr in (np.asarray(k), np.asarray(leaf["bias"])):
                assert np.abs(arr).max() <= bound
            assert np.abs(k).max() > 0.9 * bound and abs(float(np.mean(k))) < 0.1 * bound


def test_weight_norm_formula_matches_torch(rng):
    v = rng.standard_normal((3, 9, 4, 5)).astype(np.float32)
    g = rng.uniform(0.5, 2.0, 5).astype(np.float32)
    got = np.asarray(weight_norm_kernel(jnp.asarray(v), jnp.asarray(g)))
    v_t = torch.from_numpy(v.transpose(3, 2, 0, 1).copy())
    ref = torch._weight_norm(v_t, torch.from_numpy(g).reshape(5, 1, 1, 1), 0).numpy()
    np.testing.assert_allclose(got, ref.transpose(2, 3, 1, 0), rtol=1e-6, atol=1e-7)
    norms = np.sqrt((got**2).sum(axis=(0, 1, 2)))
    np.testing.assert_allclose(norms, g, rtol=1e-6)


def test_key_map_round_trip_exact(disc_and_params):
    _, params = disc_and_params
    state = disc_to_torch({"params": params})
    assert len(state) == 5 * (2 + 5 * 3)
    assert state["discriminators.0.convs.0.conv.weight"].shape == (32, 2, 3, 9)
    assert state["discriminators.3.convs.2.conv.weight_g"].shape == (32, 1, 1, 1)
    assert state["discriminators.4.conv_post.conv.weight_v"].shape == (1, 32, 3, 3)
    back = disc_from_torch(state)
    flat_a = jax.tree_util.tree_leaves_with_path(params)
    flat_b = dict(jax.tree_util.tree_leaves_with_path(back))
    assert len(flat_a) == len(flat_b)
    for path, leaf in flat_a:
        np.testing.assert_array_equal(np.asarray(leaf), flat_b[path])
    # the PyTorch module's own key set (legacy weight norm) is exactly ours
    torch_disc = TorchMSSTFTDiscriminator()
    assert set(torch_disc.state_dict()) == set(state)
    # and a torch state dict comes back to torch unchanged, including parametrized names
    sd = {k: v.detach().numpy() for k, v in torch_disc.state_dict().items()}
    again = disc_to_torch(disc_from_torch(sd))
    assert all(np.array_equal(again[k], sd[k]) for k in sd)
    renamed = {
        k.replace("weight_g", "parametrizations.weight.original0").replace(
            "weight_v", "parametrizations.weight.original1"
        ): v
        for k, v in sd.items()
    }
    assert all(np.array_equal(disc_to_torch(disc_from_torch(renamed))[k], sd[k]) for k in sd)


def _perturbed(params, rng):
    """Move g away from ||v|| so the parity test really exercises the weight-norm formula."""

    def f(path, x):
        if path[-1].key == "kernel_g":
            return x * rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
        return x

    return jax.tree_util.tree_map_with_path(f, params)


def test_forward_matches_torch(disc_and_params, rng):
    disc, params = disc_and_params
    params = _perturbed(params, rng)
    audio = (0.3 * rng.standard_normal((2, 8000))).astype(np.float32)
    logits, fmaps = jax.jit(disc.apply)({"params": params}, audio)

    torch_disc = TorchMSSTFTDiscriminator()
    state = {k: torch.from_numpy(v) for k, v in disc_to_torch(params).items()}
    torch_disc.load_state_dict(state, strict=True)
    with torch.no_grad():
        t_logits, t_fmaps = torch_disc(torch.from_numpy(audio)[:, None])
    for lg, t_lg in zip(logits, t_logits, strict=True):
        ref = t_lg.numpy().transpose(0, 2, 3, 1)
        assert lg.shape == ref.shape
        np.testing.assert_allclose(np.asarray(lg), ref, atol=1e-4, rtol=1e-4)
    for fm, t_fm in zip(fmaps, t_fmaps, strict=True):
        for f, t_f in zip(fm, t_fm, strict=True):
            ref = t_f.numpy().transpose(0, 2, 3, 1)
            assert f.shape == ref.shape
            assert np.abs(ref).max() > 1e-2
            np.testing.assert_allclose(np.asarray(f), ref, atol=1e-4, rtol=1e-4)


def test_bf16_compute_returns_float32_close_to_fp32(disc_and_params, rng):
    _, params = disc_and_params
    audio = (0.3 * rng.standard_normal((1, 4096))).astype(np.float32)
    apply32 = jax.jit(MultiScaleSTFTDiscriminator().apply)
    apply16 = jax.jit(MultiScaleSTFTDiscriminator(dtype=jnp.bfloat16).apply)
    (l32, _), (l16, f16) = apply32({"params": params}, audio), apply16({"params": params}, audio)
    assert all(x.dtype == jnp.float32 for x in l16) and f16[0][0].dtype == jnp.float32
    for a, b in zip(l32, l16, strict=True):
        # bf16 has an 8-bit mantissa: agreement to a few percent of the logit scale
        assert float(jnp.abs(a - b).max()) <= 0.05 * float(jnp.abs(a).max()) + 1e-3


@pytest.mark.parametrize("method", ["s2d", "s2d_full"])
def test_s2d_formulation_equals_lax_forward_and_gradients(disc_and_params, rng, method):
    """Space-to-depth strided convs: same logits, fmaps and gradients (params and audio)."""
    _, params = disc_and_params
    params = _perturbed(params, rng)
    audio = jnp.asarray((0.3 * rng.standard_normal((2, 6000))).astype(np.float32))

    def loss(method):
        disc = MultiScaleSTFTDiscriminator(conv_method=method)

        def f(p, x):
            logits, fmaps = disc.apply({"params": p}, x)
            # Weights of different sign per term so no gradient cancels by symmetry.
            terms = [jnp.mean(lg) for lg in logits]
            terms += [jnp.mean(jnp.square(f)) * (i + 1) for fm in fmaps for i, f in enumerate(fm)]
            return sum(terms), (logits, fmaps)

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(params, audio)

    (_, (l_lax, f_lax)), g_lax = loss("lax")
    (_, (l_s2d, f_s2d)), g_s2d = loss(method)
    for a, b in zip(jax.tree.leaves((l_lax, f_lax)), jax.tree.leaves((l_s2d, f_s2d)), strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)
    flat_lax = jax.tree_util.tree_leaves_with_path(g_lax)
    for (path, a), b in zip(flat_lax, jax.tree.leaves(g_s2d), strict=True):
        scale = float(jnp.abs(a).max())
        assert scale > 0, path
        # Relative to each gradient's scale: both sum the same products in another order.
        assert float(jnp.abs(a - b).max()) <= 1e-5 * scale, jax.tree_util.keystr(path)


def test_s2d_rejects_frequency_dilation():
    from amylm_jax.models.discriminator import conv2d_s2d, conv2d_s2d_full

    x, k = jnp.zeros((1, 4, 16, 2)), jnp.zeros((3, 9, 2, 2))
    for conv in (conv2d_s2d, conv2d_s2d_full):
        with pytest.raises(ValueError, match="frequency dilation"):
            conv(x, k, jnp.zeros(2), (1, 2), (1, 2), (1, 8), jnp.float32)


def test_disc_conv_method_auto_per_backend():
    from amylm_jax.config import CodecConfig, DiscConfig, TrainConfig

    cfg = TrainConfig()
    assert cfg.disc.resolved_conv_method("cpu") == "s2d"
    assert cfg.disc.resolved_conv_method("gpu") == "lax"
    assert cfg.disc.resolved_conv_method("tpu") == "s2d_full"
    assert DiscConfig(conv_method="lax").resolved_conv_method("cpu") == "lax"
    # The transposed-conv choice shares the same "auto" mechanism.
    assert cfg.codec.resolved_transpose_method("cpu") == "polyphase"
    assert cfg.codec.resolved_transpose_method("gpu") == "polyphase"
    assert cfg.codec.resolved_transpose_method("tpu") == "dilated"
    assert CodecConfig(transpose_method="dilated").resolved_transpose_method("cpu") == "dilated"
    with pytest.raises(ValueError, match="conv_method"):
        DiscConfig(conv_method="fft")


@pytest.mark.parametrize(
    "width,kernel,stride,dilation",
    [
        (64, (3, 9), (1, 2), (1, 1)),  # even width
        (65, (3, 9), (1, 2), (2, 1)),  # odd width, time dilation
        (20, (3, 8), (1, 2), (4, 1)),  # even kernel width
        (31, (3, 9), (1, 3), (1, 1)),  # stride 3
        (17, (3, 5), (2, 2), (1, 1)),  # time stride as well
    ],
)
@pytest.mark.parametrize("name", ["conv2d_s2d", "conv2d_s2d_full"])
def test_conv2d_s2d_equals_strided_conv(width, kernel, stride, dilation, rng, name):
    """The space-to-depth forms: same output, input and kernel gradients as lax."""
    from amylm_jax.models import discriminator
    from amylm_jax.models.discriminator import conv2d

    kh, kw = kernel
    x = jnp.asarray(rng.standard_normal((2, 11, width, 3)).astype(np.float32))
    k = jnp.asarray(rng.standard_normal((kh, kw, 3, 4)).astype(np.float32))
    b = jnp.asarray(rng.standard_normal(4).astype(np.float32))
    padding = (((kh - 1) * dilation[0]) // 2, (kw - 1) // 2)

    def run(conv):
        def f(x, k, b):
            y = conv(x, k, b, stride, dilation, padding, jnp.float32)
            return jnp.sum(y * jnp.cos(jnp.arange(y.size).reshape(y.shape))), y

        (_, y), grads = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(x, k, b)
        return y, grads

    y_ref, g_ref = run(conv2d)
    y, g = run(getattr(discriminator, name))
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-5, atol=1e-5)
    for a, r in zip(g, g_ref, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=1e-5, atol=1e-5)
