"""PyTorch weight import/export: Kyutai and Amy layouts, legacy names, errors, round trips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from amylm_jax.export import torch_layout
from amylm_jax.export.from_torch import (
    flax_to_torch,
    load_codec_weights,
    load_torch_state,
    torch_to_flax,
)
from amylm_jax.models.quantizer import SplitResidualVQ
from amylm_jax.models.resample import ConvDownsample1d, ConvTrUpsample1d
from amylm_jax.models.seanet import SEANetDecoder, SEANetEncoder
from amylm_jax.models.transformer import Transformer
from amylm_jax.reference.mimi import build_mimi, state_numpy

PROSODY = "quantizer.rvq_first.vq.layers.1._codebook."
PROSODY_KEYS = tuple(PROSODY + n for n in ("_initialized", "cluster_usage", "embedding_sum"))


def _amy_state(kyutai: dict, rng) -> dict:
    """Kyutai state plus a (random) prosody slot: the 33-slot Amy layout."""
    state = dict(kyutai)
    bins, dim = kyutai[PROSODY.replace("1.", "0.") + "embedding_sum"].shape
    state[PROSODY + "_initialized"] = np.ones((1,), np.float32)
    state[PROSODY + "cluster_usage"] = rng.uniform(0.5, 2, (bins,)).astype(np.float32)
    state[PROSODY + "embedding_sum"] = rng.standard_normal((bins, dim)).astype(np.float32)
    return state


@pytest.mark.torch
def test_kyutai_full_size_three_missing_and_slot_mapping():
    model, config = build_mimi()
    state = state_numpy(model)
    assert len(state) == 318
    variables, report = torch_to_flax(state, config)
    assert report.missing == PROSODY_KEYS
    assert report.unexpected == ()
    books = variables["codebooks"]["quantizer"]
    assert len(books["rvq_first"]) == 2 and len(books["rvq_rest"]) == 31
    fresh = books["rvq_first"]["layers_1"]
    assert fresh["initialized"].shape == () and fresh["initialized"] == 0
    np.testing.assert_array_equal(fresh["cluster_usage"], np.ones(2048, np.float32))
    np.testing.assert_array_equal(fresh["embedding_sum"], np.zeros((2048, 256), np.float32))
    assert fresh["countdown"].dtype == np.int32 and fresh["countdown"] == 5
    # Kyutai slot 0 -> rvq_first layer 0; Kyutai rvq_rest layer l -> Amy rvq_rest layer l.
    np.testing.assert_array_equal(
        books["rvq_first"]["layers_0"]["embedding_sum"],
        state["quantizer.rvq_first.vq.layers.0._codebook.embedding_sum"],
    )
    for layer in (0, 30):
        key = f"quantizer.rvq_rest.vq.layers.{layer}._codebook.cluster_usage"
        np.testing.assert_array_equal(
            books["rvq_rest"][f"layers_{layer}"]["cluster_usage"], state[key]
        )
    # Exporting in the Kyutai layout gives back the original file bit for bit.
    back = flax_to_torch(variables, config, layout="kyutai")
    assert list(back) == list(state)
    for key, value in state.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)
        assert back[key].dtype == value.dtype
    assert len(flax_to_torch(variables, config, layout="amy")) == 321


@pytest.mark.torch
def test_amy_layout_round_trip_bit_exact(rng):
    model, config = build_mimi(tiny=True)
    state = _amy_state(state_numpy(model), rng)
    variables, report = torch_to_flax(state, config)
    assert report.missing == () and report.unexpected == ()
    back = flax_to_torch(variables, config, layout="amy")
    assert set(back) == set(state)
    for key, value in state.items():
        assert back[key].shape == value.shape
        np.testing.assert_array_equal(back[key], value, err_msg=key)


@pytest.mark.torch
def test_tree_matches_the_flax_modules():
    """Every converted leaf has the path and shape the modules create in ``init``."""
    model, config = build_mimi(tiny=True)
    variables, _ = torch_to_flax(state_numpy(model), config)
    key = jax.random.PRNGKey(0)
    s, t, d = config.seanet, config.transformer, config.seanet.dimension
    stride = config.resample_stride
    expected = {
        "encoder": jax.eval_shape(SEANetEncoder(s).init, key, jnp.zeros((1, s.hop_length, 1))),
        "decoder": jax.eval_shape(SEANetDecoder(s).init, key, jnp.zeros((1, 1, d))),
        "encoder_transformer": jax.eval_shape(Transformer(t).init, key, jnp.zeros((1, 2, d))),
        "decoder_transformer": jax.eval_shape(Transformer(t).init, key, jnp.zeros((1, 2, d))),
        "downsample": jax.eval_shape(ConvDownsample1d(stride, d).init, key, jnp.zeros((1, 2, d))),
        "upsample": jax.eval_shape(ConvTrUpsample1d(stride, d).init, key, jnp.zeros((1, 2, d))),
    }
    quant = jax.eval_shape(
        lambda k: SplitResidualVQ(config.quantizer).init(k, jnp.zeros((1, 2, d)), train=False),
        key,
    )

    def shapes(tree):
        return jax.tree_util.tree_map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), tree)

    want_params = {name: tree["params"] for name, tree in expected.items()}
    want_params["quantizer"] = quant["params"]
    assert shapes(variables["params"]) == shapes(want_params)
    assert shapes(variables["codebooks"]) == shapes({"quantizer": quant["codebooks"]})


@pytest.mark.torch
def test_shape_mismatch_names_key_and_shapes():
    model, config = build_mimi(tiny=True)
    state = state_numpy(model)
    key = "decoder.model.2.convtr.convtr.weight"
    state[key] = state[key][:, :, :-1]
    with pytest.raises(ValueError, match=r"decoder\.model\.2\.convtr\.convtr\.weight.*\(.*\)"):
        torch_to_flax(state, config)


@pytest.mark.torch
def test_legacy_names_and_lightning_prefix(rng):
    model, config = build_mimi(tiny=True)
    state = _amy_state(state_numpy(model), rng)
    reference, _ = torch_to_flax(state, config)
    renames = {
        "encoder_transformer.transformer.layers.0.self_attn.in_projs.0.weight":
            "encoder_transformer.transformer.layers.0.self_attn.in_proj_weight",
        "encoder_transformer.transformer.layers.1.self_attn.in_projs.0.weight":
            "encoder_transformer.transformer.layers.1.self_attn.in_proj.weight",
        "decoder_transformer.transformer.layers.0.self_attn.out_projs.0.weight":
            "decoder_transformer.transformer.layers.0.self_attn.out_proj.weight",
        "quantizer.rvq_rest.vq.layers.0._codebook._initialized":
            "quantizer.rvq_rest.vq.layers.0._codebook.inited",
        "quantizer.rvq_rest.vq.layers.0._codebook.cluster_usage":
            "quantizer.rvq_rest.vq.layers.0._codebook.cluster_size",
        "quantizer.rvq_rest.vq.layers.0._codebook.embedding_sum":
            "quantizer.rvq_rest.vq.layers.0._codebook.embed_avg",
        "quantizer.rvq_rest.vq.layers.1._codebook.embedding_sum":
            "quantizer.rvq_rest.vq.layers.1._codebook.embed_sum",
    }  # fmt: skip
    legacy = {"model." + renames.get(k, k): v for k, v in state.items()}
    legacy["model.discriminator.convs.0.weight"] = np.zeros((2, 2), np.float32)
    legacy["wavlm_proj.weight"] = np.zeros((2, 2), np.float32)
    variables, report = torch_to_flax(legacy, config)
    assert report.missing == ()
    assert report.unexpected == ("discriminator.convs.0.weight", "wavlm_proj.weight")
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables, reference)


def test_legacy_rename_leaves_quantizer_projections_alone():
    assert torch_layout.legacy_rename("quantizer.rvq_first.input_proj.weight") == (
        "quantizer.rvq_first.input_proj.weight"
    )


@pytest.mark.torch
def test_missing_parameter_needs_base(rng):
    model, config = build_mimi(tiny=True)
    state = state_numpy(model)
    key = "decoder.model.0.conv.conv.bias"
    del state[key]
    with pytest.raises(ValueError, match=r"decoder\.model\.0\.conv\.conv\.bias.*base="):
        torch_to_flax(state, config)
    base, _ = torch_to_flax(state_numpy(model), config)
    base["params"]["decoder"]["model_0"]["bias"] = np.full_like(
        base["params"]["decoder"]["model_0"]["bias"], 7.0
    )
    variables, report = torch_to_flax(state, config, base=base)
    assert key in report.missing
    assert np.all(variables["params"]["decoder"]["model_0"]["bias"] == 7.0)


def test_missing_path_raises_without_download(tmp_path):
    path = tmp_path / "nope" / "tokenizer-e351c8d8-checkpoint125.safetensors"
    with pytest.raises(FileNotFoundError, match="tokenizer-e351c8d8-checkpoint125"):
        load_torch_state(path)
    with pytest.raises(FileNotFoundError):
        load_codec_weights("kyutai/moshiko-pytorch-bf16", build_mimi(tiny=True)[1])


@pytest.mark.torch
def test_load_safetensors_and_lightning_ckpt(tmp_path, rng):
    from safetensors.numpy import save_file

    model, config = build_mimi(tiny=True)
    state = state_numpy(model)
    save_file(state, str(tmp_path / "mimi.safetensors"))
    from_file, report = load_codec_weights(tmp_path / "mimi.safetensors", config)
    assert report.missing == PROSODY_KEYS and report.unexpected == ()
    direct, _ = torch_to_flax(state, config)
    jax.tree_util.tree_map(np.testing.assert_array_equal, from_file, direct)

    ckpt = {"state_dict": {"model." + k: torch.from_numpy(v) for k, v in state.items()}}
    ckpt["epoch"] = 3
    torch.save(ckpt, tmp_path / "last.ckpt")
    from_ckpt, report = load_codec_weights(tmp_path / "last.ckpt", config)
    assert report.missing == PROSODY_KEYS and report.unexpected == ()
    jax.tree_util.tree_map(np.testing.assert_array_equal, from_ckpt, direct)


@pytest.mark.torch
def test_tree_matches_the_codec():
    """The converted tree has exactly the leaves (paths, shapes, dtypes) of ``AmyCodec``."""
    from amylm_jax.models import amy_codec as codec

    model, config = build_mimi(tiny=True)
    variables, _ = torch_to_flax(state_numpy(model), config)
    want = jax.eval_shape(lambda k: codec.init_codec(config, k), jax.random.PRNGKey(0))

    def shapes(tree):
        return jax.tree_util.tree_map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), tree)

    assert set(want) == {"params", "codebooks"}
    assert shapes(variables) == shapes(dict(want))


@pytest.mark.torch
def test_bf16_safetensors_are_upcast(tmp_path):
    from safetensors.torch import save_file

    model, _ = build_mimi(tiny=True)
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "mimi_bf16.safetensors"))
    loaded = load_torch_state(tmp_path / "mimi_bf16.safetensors")
    key = "decoder.model.0.conv.conv.weight"
    assert loaded[key].dtype == np.float32
    np.testing.assert_array_equal(loaded[key], state[key].float().numpy())
