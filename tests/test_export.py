"""Export to PyTorch (``python -m amylm_jax.export``) from a real 2-step demo checkpoint.

Checked here: the ``amy`` file loads strictly into moshi's Mimi with a 2-semantic-slot split RVQ,
the ``transformers`` file into ``transformers.MimiModel`` and the ``kyutai`` file into a
32-slot-equivalent moshi Mimi; codes equal the JAX encode exactly, decoded audio within 1e-4;
export -> import is bit-exact for the codec, the heads and the discriminator; errors are clear.

Clip choice: a 2-step checkpoint has k-means codebooks with near-duplicate centroids (relative
distance gap ~1e-8), where any two float32 implementations may pick either index. The clips
are the first demo-corpus clips whose every code is unambiguous by JAX's own latent (relative
gap to the runner-up > 1e-5, computed in float64); the parity checks on them are exact.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from amylm_jax.checkpoint import restore_run_state
from amylm_jax.codec import LoadedCodec, read_audio_24k
from amylm_jax.data import demo
from amylm_jax.export import hf_layout
from amylm_jax.export import to_torch as T
from amylm_jax.models.amy_codec import AmyCodec
from amylm_jax.reference.mimi import moshi_config

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def run(demo_checkpoint):
    """The shared 2-step demo run: (workdir, TrainConfig, TrainState)."""
    workdir = str(demo_checkpoint)
    cfg, state = restore_run_state(workdir)
    return workdir, cfg, state


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    """Every layout exported with heads and discriminator: {layout: ExportResult}."""
    workdir, _, _ = run
    out = tmp_path_factory.mktemp("export")
    return {
        layout: T.export_run(
            workdir,
            out / f"{layout}.safetensors",
            layout=layout,
            with_heads=True,
            with_discriminator=True,
        )
        for layout in T.LAYOUTS
    }


@pytest.fixture(scope="module")
def codec(run):
    _, cfg, state = run
    variables = {"params": state.gen_params["codec"], "codebooks": state.codebooks}
    return LoadedCodec(cfg.codec, jax.tree_util.tree_map(np.asarray, variables))


def _relative_gaps(codec: LoadedCodec, audio: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Per code, (second-best - best) / best squared distance, in float64 on JAX's latent."""
    model = AmyCodec(codec.config)
    emb = model.apply(codec.variables, audio[None], method=AmyCodec.encode_to_latent)
    emb = np.asarray(emb, np.float64)[0]
    params = codec.variables["params"]["quantizer"]
    books = codec.variables["codebooks"]["quantizer"]
    q = codec.config.quantizer
    gaps = np.zeros(codes.shape)
    for rvq, indices in (
        ("rvq_first", range(q.n_q_first)),
        ("rvq_rest", range(q.n_q_first, q.num_codebooks)),
    ):
        r = emb @ np.asarray(params[rvq]["input_proj"]["kernel"], np.float64)
        for layer, k in enumerate(indices):
            book = books[rvq][f"layers_{layer}"]
            usage = np.maximum(np.asarray(book["cluster_usage"], np.float64), q.epsilon)
            centroids = np.asarray(book["embedding_sum"], np.float64) / usage[:, None]
            dist = np.sort(((r[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
            gaps[k] = (dist[:, 1] - dist[:, 0]) / np.maximum(dist[:, 0], 1e-12)
            r = r - centroids[codes[k]]
    return gaps


@pytest.fixture(scope="module")
def clips(codec):
    """Three demo clips at 24 kHz with unambiguous codes: [(audio, codes, decoded)]."""
    chosen = []
    for path in sorted(demo.demo_corpus_dir().rglob("*.wav")):
        audio = read_audio_24k(str(path))[0]
        codes = codec.encode(audio)
        if _relative_gaps(codec, audio, codes).min() > 1e-5:
            chosen.append((audio, codes, codec.decode(codes)))
        if len(chosen) == 3:
            return chosen
    pytest.fail(f"only {len(chosen)} demo clips have unambiguous codes")


def _moshi(codec_config, amy: bool):
    """moshi Mimi for the codec: Amy's split RVQ (2 semantic slots) or Kyutai's (1)."""
    from moshi.models.loaders import get_mimi
    from moshi.quantization.vq import SplitResidualVectorQuantizer

    q = codec_config.quantizer
    model = get_mimi(
        None,
        mimi_config=moshi_config(codec_config),
        device="cpu",
        num_codebooks=q.num_codebooks - 1,
    )
    if amy:
        model.quantizer = SplitResidualVectorQuantizer(
            n_q=q.n_q,
            n_q_semantic=2,
            dimension=q.dimension,
            input_dimension=q.input_dimension,
            output_dimension=q.output_dimension,
            bins=q.bins,
        )
        model.set_num_codebooks(q.num_codebooks)
    return model.eval()


def _load(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


# ------------------------------------------------------------------------------- parity
def test_amy_layout_loads_strictly_into_moshi(run, exported, clips):
    _, cfg, _ = run
    model = _moshi(cfg.codec, amy=True)
    state = _load(exported["amy"].codec)
    assert set(state) == set(model.state_dict())
    assert "quantizer.rvq_first.vq.layers.1._codebook.embedding_sum" in state
    model.load_state_dict(state, strict=True)
    for audio, codes, decoded in clips:
        with torch.no_grad():
            codes_ref = model.encode(torch.from_numpy(audio)[None, None])[0].numpy()
            audio_ref = model.decode(torch.from_numpy(codes)[None].long())[0, 0].numpy()
        np.testing.assert_array_equal(codes_ref, codes)
        assert audio_ref.shape == decoded.shape
        np.testing.assert_allclose(audio_ref, decoded, atol=1e-4, rtol=0)


def test_transformers_layout_loads_strictly_into_mimi_model(run, exported, clips):
    from transformers import MimiConfig, MimiModel

    _, cfg, _ = run
    result = exported["transformers"]
    hf_config = MimiConfig.from_json_file(result.config_json)
    assert hf_config.to_dict() == hf_layout.transformers_config(cfg.codec).to_dict()
    assert (hf_config.num_quantizers, hf_config.num_semantic_quantizers) == (6, 2)
    assert (hf_config.codebook_size, hf_config.codebook_dim, hf_config.hidden_size) == (64, 16, 32)
    assert hf_config.frame_rate == cfg.codec.frame_rate
    model = MimiModel(hf_config).eval()
    model.load_state_dict(_load(result.codec), strict=True)
    frame = cfg.codec.frame_size
    k = cfg.codec.quantizer.num_codebooks
    for audio, codes, decoded in clips:
        # transformers pads per strided conv; moshi/JAX pad the waveform to whole frames once.
        padded = np.pad(audio, (0, -audio.size % frame))
        with torch.no_grad():
            out = model.encode(torch.from_numpy(padded)[None, None], num_quantizers=k)
            audio_ref = model.decode(torch.from_numpy(codes)[None].long()).audio_values
        np.testing.assert_array_equal(out.audio_codes[0].numpy(), codes)
        audio_ref = audio_ref[0, 0].numpy()
        assert audio_ref.shape == decoded.shape
        np.testing.assert_allclose(audio_ref, decoded, atol=1e-4, rtol=0)


def test_transformers_from_pretrained_and_flat_hub_keys(run, exported, tmp_path):
    """The file + config also load with ``from_pretrained``; the flat Hub spelling imports too."""
    import shutil

    from transformers import MimiModel

    _, cfg, state = run
    result = exported["transformers"]
    shutil.copy(result.codec, tmp_path / "model.safetensors")
    shutil.copy(result.config_json, tmp_path / "config.json")
    model = MimiModel.from_pretrained(str(tmp_path))
    loaded = model.state_dict()
    for key, value in _load(result.codec).items():
        assert torch.equal(loaded[key], value), key
    amy = {k: v.numpy() for k, v in _load(exported["amy"].codec).items()}
    flat = hf_layout.amy_to_transformers(amy, cfg.codec, nested=False)
    assert "encoder.layers.0.conv.weight" in flat and "downsample.conv.weight" in flat
    variables, _ = T.codec_from_state_dict(flat, cfg.codec, "transformers")
    _assert_tree_equal(variables["params"], state.gen_params["codec"])


def test_kyutai_layout_loads_strictly_and_warns(run, exported, clips, tmp_path, capsys, caplog):
    workdir, cfg, _ = run
    out = tmp_path / "k.safetensors"
    with caplog.at_level(logging.WARNING, logger="amylm_jax.export"):
        assert T.main([f"--workdir={workdir}", f"--out={out}", "--layout=kyutai"]) == 0
    assert "drops codebook 1" in capsys.readouterr().err
    assert any("drops codebook 1" in r.getMessage() for r in caplog.records)
    model = _moshi(cfg.codec, amy=False)
    state = _load(out)
    assert len(state) == len(_load(exported["amy"].codec)) - 3
    model.load_state_dict(state, strict=True)
    for audio, codes, _ in clips:
        with torch.no_grad():
            codes_ref = model.encode(torch.from_numpy(audio)[None, None])[0].numpy()
        # Kyutai's codes = Amy's without the prosody row (the acoustic RVQ sees the same latent).
        np.testing.assert_array_equal(codes_ref, np.delete(codes, 1, axis=0))


# ------------------------------------------------------------------------------- round trips
def _assert_tree_equal(a, b, skip=()):
    flat_a = dict(jax.tree_util.tree_flatten_with_path(a)[0])
    flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
    keys = {k for k in flat_a if not any(s in jax.tree_util.keystr(k) for s in skip)}
    assert keys == {k for k in flat_b if not any(s in jax.tree_util.keystr(k) for s in skip)}
    for key in keys:
        x, y = np.asarray(flat_a[key]), np.asarray(flat_b[key])
        assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(key)
        assert np.array_equal(x, y), jax.tree_util.keystr(key)


@pytest.mark.parametrize("layout", T.LAYOUTS)
def test_export_import_round_trip_is_bit_exact(run, exported, layout):
    _, cfg, state = run
    path = exported[layout].codec
    assert T.read_metadata(path)["layout"] == layout
    assert T.codec_config_of(path) == cfg.codec
    variables = T.import_torch(path, layout, cfg.codec)
    _assert_tree_equal(variables["params"], state.gen_params["codec"])
    # countdown is Flax-only: it restarts at check_unused_every, as in PyTorch.
    skip = ("countdown",) + (("'rvq_first']['layers_1'",) if layout == "kyutai" else ())
    _assert_tree_equal(variables["codebooks"], state.codebooks, skip=skip)
    assert {int(x) for x in jax.tree_util.tree_leaves(variables["codebooks"]) if x.ndim == 0} >= {
        cfg.codec.quantizer.check_unused_every
    }
    if layout == "kyutai":  # the dropped prosody slot comes back fresh
        slot = variables["codebooks"]["quantizer"]["rvq_first"]["layers_1"]
        assert float(slot["initialized"]) == 0.0 and not slot["embedding_sum"].any()
    # and back again: the same tensors bit for bit
    again = T.codec_state_dict(variables, cfg.codec, layout)
    original = _load(path)
    assert set(again) == set(original)
    for key, value in again.items():
        assert np.array_equal(value, original[key].numpy()), key


def test_heads_and_discriminator_round_trip(run, exported):
    _, cfg, state = run
    path = exported["amy"].extra
    assert path.endswith("amy.extra.safetensors")
    tensors = _load(path)
    assert {"wavlm_proj.weight", "wavlm_proj.bias", "llm_proj.weight", "llm_proj.bias"} <= set(
        tensors
    )
    assert tensors["wavlm_proj.weight"].shape[1] == cfg.codec.quantizer.output_dimension
    g = tensors["discriminator.discriminators.0.convs.1.conv.weight_g"]
    v = tensors["discriminator.discriminators.0.convs.1.conv.weight_v"]
    assert g.shape == (v.shape[0], 1, 1, 1)
    assert "discriminator.discriminators.0.convs.0.conv.weight" in tensors  # plain first conv
    assert json.loads(T.read_metadata(path)["heads"]) == dataclasses.asdict(cfg.heads)
    assert T.disc_config_of(path) == cfg.disc
    extra = T.import_extra(path)
    _assert_tree_equal(extra["wavlm_head"], state.gen_params["wavlm_head"])
    _assert_tree_equal(extra["llm_head"], state.gen_params["llm_head"])
    _assert_tree_equal(extra["disc"], state.disc_params)


def test_ema_weights_export_and_load(run, tmp_path):
    """The demo run keeps a weight average: ``--ema`` exports and loads it, the default stays
    the raw weights, and a run without an average says so."""
    from amylm_jax.checkpoint import load_codec_from_workdir

    workdir, cfg, state = run
    assert cfg.optim.ema_decay == 0.9 and state.ema_params is not None
    gaps = jax.tree_util.tree_map(
        lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
        state.ema_params["codec"],
        state.gen_params["codec"],
    )
    assert max(jax.tree_util.tree_leaves(gaps)) > 0  # the average lags the trained weights
    assert T.main([f"--workdir={workdir}", f"--out={tmp_path / 'e.safetensors'}", "--ema",
                   "--with_heads"]) == 0  # fmt: skip
    assert T.read_metadata(tmp_path / "e.safetensors")["weights"] == "ema"
    variables = T.import_torch(tmp_path / "e.safetensors", "amy", cfg.codec)
    _assert_tree_equal(variables["params"], state.ema_params["codec"])
    _assert_tree_equal(T.import_extra(tmp_path / "e.extra.safetensors")["wavlm_head"],
                       state.ema_params["wavlm_head"])  # fmt: skip
    _, loaded = load_codec_from_workdir(workdir, ema=True)
    _assert_tree_equal(loaded["params"], state.ema_params["codec"])
    _, raw = load_codec_from_workdir(workdir)
    _assert_tree_equal(raw["params"], state.gen_params["codec"])
    with pytest.raises(T.ExportError, match="no moving average.*optim.ema_decay"):
        T.export_state(cfg, state.replace(ema_params=None), tmp_path / "x.safetensors", 2,
                       ema=True)  # fmt: skip


# ------------------------------------------------------------------------------- errors
def test_workdir_without_checkpoints(tmp_path, capsys):
    with pytest.raises(T.ExportError, match="no checkpoints"):
        T.export_run(str(tmp_path), tmp_path / "x.safetensors")
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(T.ExportError, match="no checkpoints"):
        T.export_run(str(tmp_path), tmp_path / "x.safetensors")
    proc = subprocess.run(
        [sys.executable, "-m", "amylm_jax.export", f"--workdir={tmp_path}", "--out=x.safetensors"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2 and "no checkpoints" in proc.stderr, proc.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_unknown_layout_and_step(run, exported, tmp_path, capsys):
    workdir, cfg, _ = run
    with pytest.raises(T.ExportError, match="unknown layout 'onnx'.*amy, kyutai, transformers"):
        T.export_run(workdir, tmp_path / "x.safetensors", layout="onnx")
    with pytest.raises(T.ExportError, match=r"step 7 .*available: \[2\]"):
        T.export_run(workdir, tmp_path / "x.safetensors", step=7)
    assert T.main([f"--workdir={workdir}", f"--out={tmp_path}/x.safetensors", "--step=7"]) == 2
    assert "step 7" in capsys.readouterr().err
    with pytest.raises(T.ExportError, match="unknown layout"):
        T.import_torch(exported["amy"].codec, "onnx", cfg.codec)
    # a file read with the wrong layout is refused, by metadata or by its keys
    with pytest.raises(T.ExportError, match="exported with layout 'amy'"):
        T.import_torch(exported["amy"].codec, "transformers", cfg.codec)
    amy = {k: v.numpy() for k, v in _load(exported["amy"].codec).items()}
    with pytest.raises(T.ExportError, match="not transformers.MimiModel tensors"):
        T.codec_from_state_dict(amy, cfg.codec, "transformers")
    with pytest.raises(T.ExportError, match="no prosody slot"):
        T.codec_from_state_dict(amy, cfg.codec, "kyutai")
    hf = {k: v.numpy() for k, v in _load(exported["transformers"].codec).items()}
    with pytest.raises(T.ExportError, match="missing"):
        T.codec_from_state_dict(hf, cfg.codec, "amy")
