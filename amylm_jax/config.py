"""Typed, frozen configuration for the Amy codec and its training.

Library code only ever sees these dataclasses. ``ml_collections.ConfigDict`` objects (the
``configs/*.py`` files and ``--config.x=y`` overrides) stop at the entry points, which convert
them with :func:`from_dict`. Every default reproduces the original system (SPEC.md "REF").
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, TypeVar


@dataclasses.dataclass(frozen=True)
class SEANetConfig:
    """SEANet encoder/decoder (SPEC §2.3-2.4). ``ratios`` are in decoder order."""

    channels: int = 1
    dimension: int = 512
    n_filters: int = 64
    n_residual_layers: int = 1
    ratios: tuple[int, ...] = (8, 6, 5, 4)
    kernel_size: int = 7
    residual_kernel_size: int = 3
    last_kernel_size: int = 3
    dilation_base: int = 2
    compress: int = 2

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Causal pre-norm transformer with interleaved RoPE (SPEC §2.5)."""

    d_model: int = 512
    num_heads: int = 8
    num_layers: int = 8
    dim_feedforward: int = 2048
    context: int = 250
    max_period: float = 10000.0
    layer_scale: float = 0.01
    norm_eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class QuantizerConfig:
    """Split residual VQ with EMA codebooks (SPEC §3).

    ``n_q`` codebook slots in total: ``n_q_first`` in ``rvq_first`` (semantic + prosody as its
    residual) and ``n_q - n_q_first`` in ``rvq_rest``, of which ``num_codebooks - n_q_first``
    are active. ``frozen_codebooks`` lists global codebook indices whose EMA/k-means/expiry
    updates are switched off (they still quantise).
    """

    dimension: int = 256
    input_dimension: int = 512
    output_dimension: int = 512
    bins: int = 2048
    n_q: int = 33
    n_q_first: int = 2
    num_codebooks: int = 9
    decay: float = 0.99
    epsilon: float = 1e-5
    threshold_usage_ratio: float = 0.1
    replaced_usage_ratio: float = 1.0
    check_unused_every: int = 5
    kmeans_iters: int = 50
    frozen_codebooks: tuple[int, ...] = ()

    def __post_init__(self):
        if not self.n_q_first <= self.num_codebooks <= self.n_q:
            raise ValueError(
                f"num_codebooks={self.num_codebooks} must lie in "
                f"[{self.n_q_first}, {self.n_q}] (n_q_first..n_q)"
            )

    @property
    def n_q_rest(self) -> int:
        return self.n_q - self.n_q_first

    @property
    def active_rest(self) -> int:
        return self.num_codebooks - self.n_q_first


@dataclasses.dataclass(frozen=True)
class CodecConfig:
    """The whole Mimi/Amy generator (SPEC §2)."""

    sample_rate: int = 24000
    frame_rate: float = 12.5
    seanet: SEANetConfig = SEANetConfig()
    transformer: TransformerConfig = TransformerConfig()
    quantizer: QuantizerConfig = QuantizerConfig()
    # Kyutai's released model uses a depthwise upsampling transposed conv (SPEC §2.6).
    upsample_depthwise: bool = True

    @property
    def frame_size(self) -> int:
        """Samples per 12.5 Hz frame (1920 at 24 kHz)."""
        return int(self.sample_rate / self.frame_rate)

    @property
    def encoder_frame_rate(self) -> float:
        return self.sample_rate / self.seanet.hop_length

    @property
    def resample_stride(self) -> int:
        stride = self.encoder_frame_rate / self.frame_rate
        if stride != int(stride) or stride < 1:
            raise ValueError(
                f"encoder rate {self.encoder_frame_rate} / frame rate "
                f"{self.frame_rate} must be a positive integer"
            )
        return int(stride)


def tiny_codec_config(**overrides: Any) -> CodecConfig:
    """A small codec with the real frame arithmetic (24 kHz, 12.5 Hz) for tests and demos."""
    cfg = CodecConfig(
        seanet=SEANetConfig(dimension=32, n_filters=4),
        transformer=TransformerConfig(d_model=32, num_heads=2, num_layers=2, dim_feedforward=64),
        quantizer=QuantizerConfig(
            dimension=16, input_dimension=32, output_dimension=32, bins=64, n_q=6, num_codebooks=4
        ),
    )
    return dataclasses.replace(cfg, **overrides)


T = TypeVar("T")


def from_dict(cls: type[T], data: Any) -> T:
    """Build a (nested) frozen dataclass from a mapping, rejecting unknown keys by name."""
    if data is None:
        return cls()
    if dataclasses.is_dataclass(data):
        return data  # type: ignore[return-value]
    if hasattr(data, "to_dict"):
        data = data.to_dict()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        default = fields[name].default
        if dataclasses.is_dataclass(default) and not dataclasses.is_dataclass(value):
            value = from_dict(type(default), value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
