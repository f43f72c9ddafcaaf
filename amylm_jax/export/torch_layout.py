"""PyTorch <-> Flax layout of every tensor of the Mimi/Amy codec (docs/original.md §4.2-4.4).

One table (:func:`key_rules`) lists, for a :class:`CodecConfig`, each PyTorch state-dict key
with its Flax collection and path, its PyTorch shape and the kind of layout transform. The
transforms are pure transposes/reshapes, so a round trip is bit-exact:

=============  ==================  ================  ==========================================
kind           PyTorch             Flax              note
=============  ==================  ================  ==========================================
``conv``       ``[O, I, K]``       ``[K, I, O]``     Conv1d, not flipped
``convtr``     ``[I, O, K]``       ``[K, I, O]``     ConvTranspose1d, scatter form, not flipped
``convtr_dw``  ``[C, 1, K]``       ``[K, 1, C]``     depthwise ConvTranspose1d (groups = C)
``linear``     ``[O, I]``          ``[I, O]``        nn.Linear -> Dense kernel
``proj``       ``[O, I, 1]``       ``[I, O]``        1x1 Conv1d (quantizer projections) -> Dense
``vector``     any                 same              biases, norms, scales, codebook buffers
``flag``       ``[1]``             ``[]``            codebook ``_initialized``
=============  ==================  ================  ==========================================
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np

from amylm_jax.config import CodecConfig, SEANetConfig

_TO_FLAX: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "conv": lambda w: np.transpose(w, (2, 1, 0)),
    "convtr": lambda w: np.transpose(w, (2, 0, 1)),
    "convtr_dw": lambda w: np.transpose(w, (2, 1, 0)),
    "linear": lambda w: np.transpose(w, (1, 0)),
    "proj": lambda w: np.transpose(w[:, :, 0], (1, 0)),
    "vector": lambda w: w,
    "flag": lambda w: w.reshape(()),
}
_TO_TORCH: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "conv": lambda w: np.transpose(w, (2, 1, 0)),
    "convtr": lambda w: np.transpose(w, (1, 2, 0)),
    "convtr_dw": lambda w: np.transpose(w, (2, 1, 0)),
    "linear": lambda w: np.transpose(w, (1, 0)),
    "proj": lambda w: np.transpose(w, (1, 0))[:, :, None],
    "vector": lambda w: w,
    "flag": lambda w: w.reshape((1,)),
}

# Old names that the original remaps on load (docs/original.md §4.2). Applied to the key suffix.
LEGACY_RENAMES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\.self_attn\.in_proj_weight$"), ".self_attn.in_projs.0.weight"),
    (re.compile(r"\.self_attn\.in_proj\.weight$"), ".self_attn.in_projs.0.weight"),
    (re.compile(r"\.self_attn\.out_proj\.weight$"), ".self_attn.out_projs.0.weight"),
    (re.compile(r"\._codebook\.inited$"), "._codebook._initialized"),
    (re.compile(r"\._codebook\.cluster_size$"), "._codebook.cluster_usage"),
    (re.compile(r"\._codebook\.embed_(avg|sum)$"), "._codebook.embedding_sum"),
)


@dataclasses.dataclass(frozen=True)
class TensorRule:
    """One PyTorch tensor and where it lives in the Flax variable tree."""

    torch_key: str
    collection: str  # "params" or "codebooks"
    path: tuple[str, ...]
    kind: str
    torch_shape: tuple[int, ...]


def to_flax(kind: str, value: np.ndarray) -> np.ndarray:
    """PyTorch layout -> Flax layout for a tensor of the given kind (a view where possible)."""
    return _TO_FLAX[kind](value)


def to_torch(kind: str, value: np.ndarray) -> np.ndarray:
    """Flax layout -> PyTorch layout, the exact inverse of :func:`to_flax`."""
    return _TO_TORCH[kind](value)


def legacy_rename(key: str) -> str:
    """Map an old PyTorch key name to the current one (identity for current names)."""
    for pattern, replacement in LEGACY_RENAMES:
        key = pattern.sub(replacement, key)
    return key


def _conv(
    key: str, path: tuple[str, ...], out_ch: int, in_ch: int, k: int, kind: str = "conv"
) -> list[TensorRule]:
    shape = (in_ch, out_ch, k) if kind == "convtr" else (out_ch, in_ch, k)
    return [
        TensorRule(f"{key}.weight", "params", (*path, "kernel"), kind, shape),
        TensorRule(f"{key}.bias", "params", (*path, "bias"), "vector", (out_ch,)),
    ]


def _res_rules(side: str, idx: int, dim: int, cfg: SEANetConfig) -> list[TensorRule]:
    prefix, path = f"{side}.model.{idx}.block", (side, f"model_{idx}")
    hid = dim // cfg.compress
    first = _conv(f"{prefix}.1.conv.conv", (*path, "block_1"), hid, dim, cfg.residual_kernel_size)
    return first + _conv(f"{prefix}.3.conv.conv", (*path, "block_3"), dim, hid, 1)


def _seanet_rules(cfg: SEANetConfig) -> list[TensorRule]:
    """Walk the SEANet ``nn.Sequential`` exactly as ``models/seanet.py`` builds it."""
    nf, n_res = cfg.n_filters, cfg.n_residual_layers

    def conv(side, idx, out_ch, in_ch, k, kind="conv"):
        sub = "convtr.convtr" if kind == "convtr" else "conv.conv"
        return _conv(
            f"{side}.model.{idx}.{sub}", (side, f"model_{idx}"), out_ch, in_ch, k, kind=kind
        )

    rules = conv("encoder", 0, nf, cfg.channels, cfg.kernel_size)
    idx, mult = 1, 1
    for ratio in reversed(cfg.ratios):
        for _ in range(n_res):
            rules += _res_rules("encoder", idx, mult * nf, cfg)
            idx += 1
        idx += 1  # ELU
        rules += conv("encoder", idx, 2 * mult * nf, mult * nf, 2 * ratio)
        idx, mult = idx + 1, mult * 2
    rules += conv("encoder", idx + 1, cfg.dimension, mult * nf, cfg.last_kernel_size)

    mult = 2 ** len(cfg.ratios)
    rules += conv("decoder", 0, mult * nf, cfg.dimension, cfg.kernel_size)
    idx = 1
    for ratio in cfg.ratios:
        idx += 1  # ELU
        rules += conv("decoder", idx, mult * nf // 2, mult * nf, 2 * ratio, kind="convtr")
        idx += 1
        for _ in range(n_res):
            rules += _res_rules("decoder", idx, mult * nf // 2, cfg)
            idx += 1
        mult //= 2
    rules += conv("decoder", idx + 1, cfg.channels, nf, cfg.last_kernel_size)
    return rules


def _transformer_rules(config: CodecConfig) -> list[TensorRule]:
    tcfg = config.transformer
    d, ff = tcfg.d_model, tcfg.dim_feedforward
    rules: list[TensorRule] = []
    for side in ("encoder_transformer", "decoder_transformer"):
        for layer in range(tcfg.num_layers):
            prefix = f"{side}.transformer.layers.{layer}"
            path = (side, f"layers_{layer}")

            def add(key, sub, kind, shape, prefix=prefix, path=path):
                rules.append(TensorRule(f"{prefix}.{key}", "params", (*path, *sub), kind, shape))

            # Same order as the PyTorch state dict (out_projs is registered first).
            attn = ("self_attn", "out_proj", "kernel")
            add("self_attn.out_projs.0.weight", attn, "linear", (d, d))
            attn = ("self_attn", "in_proj", "kernel")
            add("self_attn.in_projs.0.weight", attn, "linear", (3 * d, d))
            for norm in ("norm1", "norm2"):
                add(f"{norm}.weight", (norm, "scale"), "vector", (d,))
                add(f"{norm}.bias", (norm, "bias"), "vector", (d,))
            add("linear1.weight", ("linear1", "kernel"), "linear", (ff, d))
            add("linear2.weight", ("linear2", "kernel"), "linear", (d, ff))
            add("layer_scale_1.scale", ("layer_scale_1", "scale"), "vector", (d,))
            add("layer_scale_2.scale", ("layer_scale_2", "scale"), "vector", (d,))
    return rules


def codebook_rules(config: CodecConfig, rvq: str, layer: int) -> list[TensorRule]:
    """The three stored buffers of one codebook slot (``countdown`` is Flax-only)."""
    q = config.quantizer
    prefix = f"quantizer.{rvq}.vq.layers.{layer}._codebook"
    path = ("quantizer", rvq, f"layers_{layer}")
    return [
        TensorRule(f"{prefix}._initialized", "codebooks", (*path, "initialized"), "flag", (1,)),
        TensorRule(
            f"{prefix}.cluster_usage", "codebooks", (*path, "cluster_usage"), "vector", (q.bins,)
        ),
        TensorRule(
            f"{prefix}.embedding_sum",
            "codebooks",
            (*path, "embedding_sum"),
            "vector",
            (q.bins, q.dimension),
        ),
    ]


def _quantizer_rules(config: CodecConfig) -> list[TensorRule]:
    q = config.quantizer
    rules: list[TensorRule] = []
    for rvq, n_slots, _, _ in q.sub_quantizers():
        base = ("quantizer", rvq)
        rules.append(
            TensorRule(
                f"quantizer.{rvq}.input_proj.weight",
                "params",
                (*base, "input_proj", "kernel"),
                "proj",
                (q.dimension, q.input_dimension, 1),
            )
        )
        rules.append(
            TensorRule(
                f"quantizer.{rvq}.output_proj.weight",
                "params",
                (*base, "output_proj", "kernel"),
                "proj",
                (q.output_dimension, q.dimension, 1),
            )
        )
        for layer in range(n_slots):
            rules += codebook_rules(config, rvq, layer)
    return rules


def is_prosody_key(key: str) -> bool:
    """A tensor of codebook 1 (prosody), which Kyutai's Mimi does not have: ``rvq_first``
    layers 1.. (residual topology) or anything of ``rvq_prosody`` (parallel topology)."""
    if key.startswith("quantizer.rvq_prosody."):
        return True
    prefix = "quantizer.rvq_first.vq.layers."
    return key.startswith(prefix) and int(key[len(prefix) :].split(".")[0]) >= 1


def key_rules(config: CodecConfig) -> list[TensorRule]:
    """Every tensor of the Amy codec (all ``n_q`` codebook slots), in state-dict order."""
    d = config.seanet.dimension
    k = 2 * config.resample_stride
    if config.upsample_depthwise:
        up = TensorRule(
            "upsample.convtr.convtr.convtr.weight",
            "params",
            ("upsample", "kernel"),
            "convtr_dw",
            (d, 1, k),
        )
    else:
        up = TensorRule(
            "upsample.convtr.convtr.convtr.weight",
            "params",
            ("upsample", "kernel"),
            "convtr",
            (d, d, k),
        )
    down = TensorRule(
        "downsample.conv.conv.conv.weight", "params", ("downsample", "kernel"), "conv", (d, d, k)
    )
    seanet = _seanet_rules(config.seanet)
    return seanet + _transformer_rules(config) + _quantizer_rules(config) + [down, up]
