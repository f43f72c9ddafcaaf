"""Shared PyTorch reference for parity tests: moshi's Mimi with random weights.

Norm weights/biases and layer scales are re-drawn (moshi initialises them to 1/0/0.01,
which would hide layout mistakes), and codebook buffers get random values so the import
and export round trips are checked on non-trivial data.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import torch

from amylm_jax.config import CodecConfig, tiny_codec_config


def moshi_config(config: CodecConfig) -> dict:
    """moshi's ``_mimi_config`` dict for a codec config (Kyutai layout: ``n_q - 1`` slots)."""
    from moshi.models import loaders

    cfg = copy.deepcopy(loaders._mimi_config)
    s, t, q = config.seanet, config.transformer, config.quantizer
    cfg["sample_rate"] = config.sample_rate
    cfg["frame_rate"] = config.frame_rate
    cfg["seanet"].update(
        channels=s.channels,
        dimension=s.dimension,
        n_filters=s.n_filters,
        n_residual_layers=s.n_residual_layers,
        ratios=list(s.ratios),
        kernel_size=s.kernel_size,
        residual_kernel_size=s.residual_kernel_size,
        last_kernel_size=s.last_kernel_size,
        dilation_base=s.dilation_base,
        compress=s.compress,
    )
    cfg["transformer"].update(
        d_model=t.d_model,
        num_heads=t.num_heads,
        num_layers=t.num_layers,
        dim_feedforward=t.dim_feedforward,
        context=t.context,
        max_period=t.max_period,
        layer_scale=t.layer_scale,
        input_dimension=s.dimension,
        output_dimensions=[s.dimension],
    )
    cfg["quantizer"].update(
        dimension=q.dimension,
        n_q=q.n_q - (q.n_q_first - 1),
        bins=q.bins,
        input_dimension=q.input_dimension,
        output_dimension=q.output_dimension,
    )
    return cfg


def randomize_codebooks(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Every codebook buffer under ``module`` random (``sum ~ N(0, 1)``, usage in [0.5, 1.5))
    and marked initialised, so nothing runs k-means and the round trips see non-trivial data.
    """
    with torch.no_grad():
        for name, b in module.named_buffers():
            if name.endswith("embedding_sum"):
                b.copy_(torch.randn(b.shape, generator=gen))
            elif name.endswith("cluster_usage"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))
            elif name.endswith("_initialized"):
                b.fill_(1.0)


def _randomize(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".norm" in name:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))
            elif "layer_scale" in name:
                p.copy_(0.3 + 0.4 * torch.rand(p.shape, generator=gen))
    randomize_codebooks(model, gen)


@functools.lru_cache(maxsize=2)
def build_mimi(tiny: bool = False, seed: int = 0):
    """A random-weight moshi Mimi (eval mode) and the matching :class:`CodecConfig`."""
    from moshi.models import loaders

    config = tiny_codec_config() if tiny else CodecConfig()
    torch.manual_seed(seed)
    mimi_cfg = moshi_config(config)
    n_books = min(8, mimi_cfg["quantizer"]["n_q"])
    model = loaders.get_mimi(None, mimi_config=mimi_cfg, device="cpu", num_codebooks=n_books)
    _randomize(model, seed)
    return model, config


def state_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """``state_dict`` as numpy arrays (copies)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def to_torch_bct(x_btc: np.ndarray) -> torch.Tensor:
    """Channels-last numpy -> channels-first torch."""
    return torch.from_numpy(np.ascontiguousarray(np.transpose(x_btc, (0, 2, 1))))


def from_torch_bct(y: torch.Tensor) -> np.ndarray:
    """Channels-first torch -> channels-last numpy."""
    return np.transpose(y.detach().numpy(), (0, 2, 1))
