"""Key layout of ``transformers.MimiModel`` and its config, built from our :class:`CodecConfig`.

The map goes through the moshi/Amy state dict of :mod:`amylm_jax.export.torch_layout`
(``flax_to_torch(..., layout="amy")``), so only renames and pure tensor reshuffles happen here
and a round trip is bit-exact. transformers' Mimi differs from moshi's in names only, except:

* **attention**: moshi's fused ``in_projs.0.weight`` ``[3D, D]`` is split into ``q_proj``,
  ``k_proj``, ``v_proj``; moshi's RoPE rotates *interleaved* pairs ``(2i, 2i+1)`` while
  transformers rotates *halves* ``(i, i + Dh/2)`` per head, so the rows of ``q_proj`` and
  ``k_proj`` are permuted per head (the same permutation as transformers' conversion script,
  ``w.view(H, Dh/2, 2, D).transpose(1, 2)``); the attention scores are unchanged;
* **quantizer**: ``rvq_first`` -> ``semantic_residual_vector_quantizer`` (Amy's 2 slots:
  semantic + prosody, ``num_semantic_quantizers = n_q_first``), ``rvq_rest`` ->
  ``acoustic_residual_vector_quantizer``; ``vq.layers.L._codebook.{_initialized,
  cluster_usage, embedding_sum}`` -> ``layers.L.codebook.{initialized, cluster_usage,
  embed_sum}``. transformers' semantic RVQ quantises the residual of its layer 0 with layer 1,
  exactly Amy's residual prosody, and its acoustic RVQ sees the same latent (split RVQ);
  centroids are ``embed_sum / max(cluster_usage, 1e-5)`` as in moshi (the ``initialized``
  flag is stored but never read, like in eval-mode moshi);
* **padding**: moshi (and amylm_jax) right-pad the waveform to a multiple of the frame size
  (1920) once, then run the convolutions without further padding; transformers pads each
  strided conv to its own stride instead. The two agree exactly when the input length is a
  multiple of the frame size, so pad with zeros to ``ceil(N / 1920) * 1920`` before
  ``MimiModel.encode`` to get identical codes. ``MimiModel.encode`` uses all
  ``num_quantizers`` (= every exported slot) unless ``num_quantizers=`` is passed: pass the
  run's ``num_codebooks``. ``decode`` returns ``T * 1920`` samples, like moshi.
* **projections**: transformers only builds the quantizer's 1x1 projections when
  ``codebook_dim != hidden_size``; Amy always has them (``force_projection``), so a codec with
  ``quantizer.dimension == hidden size`` cannot be expressed (an error).

Two key spellings exist. The default (``nested=True``) is ``MimiModel().state_dict()`` of
transformers >= 5 (``encoder.encoder_seanet.layers.*``, ``encoder.encoder_transformer.*``,
``encoder.downsample.*``, ``decoder.upsample.*``, ...), which ``load_state_dict(strict=True)``
accepts. ``nested=False`` gives the flat layout of the Hub checkpoint ``kyutai/mimi``
(``encoder.layers.*``, ``encoder_transformer.*``, ``downsample.*``, ...) that transformers 4
uses directly and transformers 5 renames on ``from_pretrained``. The import accepts both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from amylm_jax.config import CodecConfig

_RVQ = {
    "rvq_first": "semantic_residual_vector_quantizer",
    "rvq_rest": "acoustic_residual_vector_quantizer",
}
_CODEBOOK = {"_initialized": "initialized", "cluster_usage": "cluster_usage"}
_CODEBOOK["embedding_sum"] = "embed_sum"
_LAYER = {
    "self_attn.out_projs.0.weight": "self_attn.o_proj.weight",
    "norm1.weight": "input_layernorm.weight",
    "norm1.bias": "input_layernorm.bias",
    "norm2.weight": "post_attention_layernorm.weight",
    "norm2.bias": "post_attention_layernorm.bias",
    "linear1.weight": "mlp.fc1.weight",
    "linear2.weight": "mlp.fc2.weight",
    "layer_scale_1.scale": "self_attn_layer_scale.scale",
    "layer_scale_2.scale": "mlp_layer_scale.scale",
}
_LAYER_BACK = {v: k for k, v in _LAYER.items()}
# Flat (Hub) prefix -> nested (transformers >= 5 ``state_dict``) prefix, as in transformers'
# ``conversion_mapping`` for ``MimiModel``.
_NESTED = (
    ("encoder.layers.", "encoder.encoder_seanet.layers."),
    ("encoder_transformer.", "encoder.encoder_transformer."),
    ("downsample.", "encoder.downsample."),
    ("upsample.", "decoder.upsample."),
    ("decoder_transformer.", "decoder.decoder_transformer."),
    ("decoder.layers.", "decoder.decoder_seanet.layers."),
)


def check_expressible(config: CodecConfig) -> None:
    """Raise ``ValueError`` if ``transformers.MimiModel`` cannot hold this codec exactly."""
    s, t, q = config.seanet, config.transformer, config.quantizer
    hidden = s.dimension
    problems = []
    if t.d_model != hidden:
        problems.append(f"transformer.d_model={t.d_model} != seanet.dimension={hidden}")
    if q.input_dimension != hidden or q.output_dimension != hidden:
        problems.append(
            f"quantizer input/output dimension ({q.input_dimension}, {q.output_dimension}) "
            f"!= seanet.dimension={hidden}"
        )
    if q.dimension == hidden:
        problems.append(
            f"quantizer.dimension == hidden size ({hidden}): transformers drops the quantizer "
            "projections in that case, Amy always has them"
        )
    if q.prosody_topology != "residual":
        problems.append(
            "prosody_topology='parallel': MimiModel's semantic quantizer has no place for a "
            "second quantizer on the same latent"
        )
    if q.n_q_first >= q.n_q:
        problems.append(f"n_q_first={q.n_q_first} must be < n_q={q.n_q}")
    if q.bins & (q.bins - 1):
        problems.append(f"quantizer.bins={q.bins} must be a power of 2 for transformers")
    if t.d_model % t.num_heads or (t.d_model // t.num_heads) % 2:
        problems.append(f"d_model={t.d_model} / num_heads={t.num_heads} must be an even integer")
    if problems:
        message = "; ".join(problems)
        raise ValueError(f"cannot express this codec as transformers.MimiModel: {message}")


def transformers_config_kwargs(config: CodecConfig) -> dict[str, Any]:
    """Keyword arguments of ``transformers.MimiConfig`` equivalent to ``config``."""
    check_expressible(config)
    s, t, q = config.seanet, config.transformer, config.quantizer
    kwargs: dict[str, Any] = dict(
        sampling_rate=config.sample_rate,
        audio_channels=s.channels,
        hidden_size=s.dimension,
        num_filters=s.n_filters,
        num_residual_layers=s.n_residual_layers,
        upsampling_ratios=list(s.ratios),
        kernel_size=s.kernel_size,
        last_kernel_size=s.last_kernel_size,
        residual_kernel_size=s.residual_kernel_size,
        dilation_growth_rate=s.dilation_base,
        use_causal_conv=True,
        pad_mode="constant",
        compress=s.compress,
        trim_right_ratio=1.0,
        codebook_size=q.bins,
        codebook_dim=q.dimension,
        vector_quantization_hidden_dimension=q.dimension,
        num_quantizers=q.n_q,
        num_semantic_quantizers=q.n_q_first,
        use_conv_shortcut=False,
        upsample_groups=s.dimension if config.upsample_depthwise else 1,
        num_hidden_layers=t.num_layers,
        intermediate_size=t.dim_feedforward,
        num_attention_heads=t.num_heads,
        num_key_value_heads=t.num_heads,
        head_dim=t.d_model // t.num_heads,
        hidden_act="gelu",
        norm_eps=t.norm_eps,
        sliding_window=t.context,
        rope_parameters={"rope_theta": float(t.max_period), "rope_type": "default"},
        layer_scale_initial_scale=t.layer_scale,
        attention_bias=False,
    )
    # transformers derives the frame rate assuming a downsampling stride of 2 (Kyutai's);
    # any other stride needs the explicit (backward-compatible) ``frame_rate`` argument.
    if config.resample_stride != 2:
        kwargs["frame_rate"] = config.frame_rate
    return kwargs


def transformers_config(config: CodecConfig):
    """``transformers.MimiConfig`` of our codec: all ``n_q`` slots, ``n_q_first`` semantic."""
    from transformers import MimiConfig  # heavy (PyTorch)

    return MimiConfig(**transformers_config_kwargs(config))


# --------------------------------------------------------------------------- RoPE permutation
def _interleaved_to_halves(w: np.ndarray, heads: int) -> np.ndarray:
    out_dim, in_dim = w.shape
    return w.reshape(heads, out_dim // heads // 2, 2, in_dim).transpose(0, 2, 1, 3).reshape(w.shape)


def _halves_to_interleaved(w: np.ndarray, heads: int) -> np.ndarray:
    out_dim, in_dim = w.shape
    return w.reshape(heads, 2, out_dim // heads // 2, in_dim).transpose(0, 2, 1, 3).reshape(w.shape)


# --------------------------------------------------------------------------- key renames
_SEANET = re.compile(
    r"^(encoder|decoder)\.model\.(\d+(?:\.block\.\d+)?)\.(?:conv\.conv|convtr\.convtr)\."
    r"(weight|bias)$"
)
_TRANSFORMER = re.compile(r"^(encoder|decoder)_transformer\.transformer\.layers\.(\d+)\.(.+)$")
_QUANT = re.compile(r"^quantizer\.(rvq_first|rvq_rest)\.(input_proj\.weight|output_proj\.weight)$")
_BOOK = re.compile(r"^quantizer\.(rvq_first|rvq_rest)\.vq\.layers\.(\d+)\._codebook\.(\w+)$")


def _nest(key: str) -> str:
    for flat, nested in _NESTED:
        if key.startswith(flat):
            return nested + key[len(flat) :]
    return key


def _flatten(key: str) -> str:
    for flat, nested in _NESTED:
        if key.startswith(nested):
            return flat + key[len(nested) :]
    return key


def amy_to_transformers(
    state: Mapping[str, np.ndarray], config: CodecConfig, nested: bool = True
) -> dict[str, np.ndarray]:
    """moshi/Amy PyTorch state dict (``flax_to_torch`` output) -> ``MimiModel`` state dict."""
    check_expressible(config)
    heads = config.transformer.num_heads
    d = config.transformer.d_model
    out: dict[str, np.ndarray] = {}

    def put(key: str, value: np.ndarray) -> None:
        out[_nest(key) if nested else key] = np.array(value, order="C")

    for key, value in state.items():
        if m := _SEANET.match(key):
            put(f"{m[1]}.layers.{m[2]}.conv.{m[3]}", value)
        elif m := _TRANSFORMER.match(key):
            prefix = f"{m[1]}_transformer.layers.{m[2]}."
            if m[3] == "self_attn.in_projs.0.weight":
                q, k, v = value[:d], value[d : 2 * d], value[2 * d :]
                put(prefix + "self_attn.q_proj.weight", _interleaved_to_halves(q, heads))
                put(prefix + "self_attn.k_proj.weight", _interleaved_to_halves(k, heads))
                put(prefix + "self_attn.v_proj.weight", v)
            elif m[3] in _LAYER:
                put(prefix + _LAYER[m[3]], value)
            else:
                raise KeyError(f"no transformers name for {key!r}")
        elif key == "downsample.conv.conv.conv.weight":
            put("downsample.conv.weight", value)
        elif key == "upsample.convtr.convtr.convtr.weight":
            put("upsample.conv.weight", value)
        elif m := _QUANT.match(key):
            put(f"quantizer.{_RVQ[m[1]]}.{m[2]}", value)
        elif (m := _BOOK.match(key)) and m[3] in _CODEBOOK:
            put(f"quantizer.{_RVQ[m[1]]}.layers.{m[2]}.codebook.{_CODEBOOK[m[3]]}", value)
        else:
            raise KeyError(f"no transformers name for {key!r}")
    return out


_HF_SEANET = re.compile(r"^(encoder|decoder)\.layers\.(\d+(?:\.block\.\d+)?)\.conv\.(weight|bias)$")
_HF_TRANSFORMER = re.compile(r"^(encoder|decoder)_transformer\.layers\.(\d+)\.(.+)$")
_HF_QUANT = re.compile(
    r"^quantizer\.(semantic|acoustic)_residual_vector_quantizer\."
    r"(?:(input_proj|output_proj)\.weight|layers\.(\d+)\.codebook\.(\w+))$"
)


def transformers_to_amy(
    state: Mapping[str, np.ndarray], config: CodecConfig
) -> dict[str, np.ndarray]:
    """Inverse of :func:`amy_to_transformers` (nested or flat keys) -> moshi/Amy state dict.

    A key that is not a ``MimiModel`` tensor raises ``KeyError`` naming all such keys.
    """
    heads = config.transformer.num_heads
    rvq = {v.split("_")[0]: k for k, v in _RVQ.items()}
    book = {v: k for k, v in _CODEBOOK.items()}
    convtr = _convtr_indices(config)
    out: dict[str, np.ndarray] = {}
    qkv: dict[str, dict[str, np.ndarray]] = {}
    unknown: list[str] = []
    for key, value in state.items():
        flat = _flatten(key)
        value = np.asarray(value)
        if m := _HF_SEANET.match(flat):
            sub = "convtr.convtr" if m[1] == "decoder" and m[2] in convtr else "conv.conv"
            out[f"{m[1]}.model.{m[2]}.{sub}.{m[3]}"] = value
        elif m := _HF_TRANSFORMER.match(flat):
            prefix = f"{m[1]}_transformer.transformer.layers.{m[2]}."
            name = m[3]
            if name in ("self_attn.q_proj.weight", "self_attn.k_proj.weight"):
                qkv.setdefault(prefix, {})[name[10]] = _halves_to_interleaved(value, heads)
            elif name == "self_attn.v_proj.weight":
                qkv.setdefault(prefix, {})["v"] = value
            elif name in _LAYER_BACK:
                out[prefix + _LAYER_BACK[name]] = value
            else:
                unknown.append(key)
        elif flat == "downsample.conv.weight":
            out["downsample.conv.conv.conv.weight"] = value
        elif flat == "upsample.conv.weight":
            out["upsample.convtr.convtr.convtr.weight"] = value
        elif (m := _HF_QUANT.match(flat)) and (m[2] or m[4] in book):
            base = f"quantizer.{rvq[m[1]]}"
            if m[2]:
                out[f"{base}.{m[2]}.weight"] = value
            else:
                out[f"{base}.vq.layers.{m[3]}._codebook.{book[m[4]]}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"not transformers.MimiModel tensors: {sorted(unknown)}")
    for prefix, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            missing = sorted({"q", "k", "v"} - set(parts))
            raise KeyError(f"{prefix}self_attn: missing {missing}_proj to rebuild in_projs")
        out[prefix + "self_attn.in_projs.0.weight"] = np.concatenate(
            [parts["q"], parts["k"], parts["v"]], axis=0
        )
    return out


def _convtr_indices(config: CodecConfig) -> set[str]:
    """Decoder ``nn.Sequential`` indices holding a transposed conv (as in torch_layout)."""
    idx, found = 1, set()
    for _ in config.seanet.ratios:
        idx += 1  # ELU
        found.add(str(idx))
        idx += 1 + config.seanet.n_residual_layers
    return found
