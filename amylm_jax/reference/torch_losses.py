"""PyTorch reference implementations of the discriminator and losses (written from docs/original.md
§5, §6).

Used by the parity tests and by the PyTorch baseline benchmark. Layouts are PyTorch's
(audio ``[B, 1, N]``, images ``[B, C, H=frames, W=bins]``). No torchaudio: the STFT is
``torch.stft(center=False, normalized=False)`` divided by ``sqrt(sum w^2)`` (torchaudio's
*window* normalisation) and the mel filterbank is torchaudio's ``melscale_fbanks`` formula
(HTK scale, no norm) written out. Module names follow audiocraft, so
``TorchMSSTFTDiscriminator().state_dict()`` has the original checkpoint's keys.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def torch_stft(
    x: torch.Tensor, n_fft: int, hop: int, win_length: int, normalized: bool = True
) -> torch.Tensor:
    """One-sided STFT ``[..., N] -> [..., n_fft//2 + 1, M]``, center=False, periodic Hann."""
    shape = x.shape
    window = torch.hann_window(win_length, dtype=x.dtype, device=x.device)
    spec = torch.stft(
        x.reshape(-1, shape[-1]),
        n_fft=n_fft,
        hop_length=hop,
        win_length=win_length,
        window=window,
        center=False,
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    if normalized:
        spec = spec / window.pow(2).sum().sqrt()
    return spec.reshape(*shape[:-1], *spec.shape[-2:])


class NormConv2d(nn.Module):
    """audiocraft ``NormConv2d``: ``nn.Conv2d`` in ``.conv``, optional legacy weight norm."""

    def __init__(self, *args, norm: str = "none", **kwargs):
        super().__init__()
        conv = nn.Conv2d(*args, **kwargs)
        if norm == "weight_norm":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                conv = nn.utils.weight_norm(conv)
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _pad2d(kernel: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    return tuple(((k - 1) * d) // 2 for k, d in zip(kernel, dilation, strict=True))


class TorchDiscriminatorSTFT(nn.Module):
    """One STFT sub-discriminator (docs/original.md §5.1): returns ``(logits [B,1,M,F'],
    fmaps[5])``."""

    def __init__(
        self,
        filters: int = 32,
        n_fft: int = 1024,
        hop_length: int = 256,
        win_length: int = 1024,
        negative_slope: float = 0.3,
        normalized: bool = True,
        kernel_size: tuple[int, int] = (3, 9),
        stride: tuple[int, int] = (1, 2),
        dilations: Sequence[int] = (1, 2, 4),
        norm: str = "weight_norm",
    ):
        super().__init__()
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.normalized = normalized
        self.activation = nn.LeakyReLU(negative_slope)
        self.convs = nn.ModuleList(
            [NormConv2d(2, filters, kernel_size=kernel_size, padding=_pad2d(kernel_size))]
        )
        for d in dilations:
            self.convs.append(
                NormConv2d(
                    filters,
                    filters,
                    kernel_size=kernel_size,
                    stride=stride,
                    dilation=(d, 1),
                    padding=_pad2d(kernel_size, (d, 1)),
                    norm=norm,
                )
            )
        k = (kernel_size[0], kernel_size[0])
        self.convs.append(NormConv2d(filters, filters, kernel_size=k, padding=_pad2d(k), norm=norm))
        self.conv_post = NormConv2d(filters, 1, kernel_size=k, padding=_pad2d(k), norm=norm)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        z = torch_stft(x, self.n_fft, self.hop_length, self.win_length, self.normalized)
        z = torch.cat([z.real, z.imag], dim=1)  # [B, 2, F, M]
        z = z.transpose(2, 3)  # [B, 2, M, F]
        fmap = []
        for layer in self.convs:
            z = self.activation(layer(z))
            fmap.append(z)
        return self.conv_post(z), fmap


class TorchMSSTFTDiscriminator(nn.Module):
    """Multi-scale STFT discriminator (docs/original.md §5.2); audio ``[B, 1, N]``."""

    def __init__(
        self,
        filters: int = 32,
        n_ffts: Sequence[int] = (1024, 2048, 512, 256, 128),
        hop_lengths: Sequence[int] = (256, 512, 128, 64, 32),
        win_lengths: Sequence[int] = (1024, 2048, 512, 256, 128),
        negative_slope: float = 0.3,
    ):
        super().__init__()
        self.discriminators = nn.ModuleList(
            [
                TorchDiscriminatorSTFT(filters, n, h, w, negative_slope)
                for n, h, w in zip(n_ffts, hop_lengths, win_lengths, strict=True)
            ]
        )

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        logits, fmaps = [], []
        for disc in self.discriminators:
            lg, fm = disc(x)
            logits.append(lg)
            fmaps.append(fm)
        return logits, fmaps


def torch_mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float | None = None
) -> torch.Tensor:
    """torchaudio ``melscale_fbanks(..., norm=None, mel_scale="htk")`` as ``[F, n_mels]``."""
    f_max = sample_rate / 2 if f_max is None else f_max
    # float64 here (torchaudio uses float32, which is off by up to ~1e-5): this is the formula
    # check, so keep its own rounding out of the way.
    all_freqs = torch.linspace(0, sample_rate // 2, n_fft // 2 + 1, dtype=torch.float64)

    def hz_to_mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    m_pts = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=torch.float64)
    f_pts = 700.0 * (10 ** (m_pts / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)  # [F, n_mels + 2]
    down = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.min(down, up), min=0.0).float()


def _pad_for_conv1d(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    length = x.shape[-1]
    n_frames = (length - kernel) / stride + 1
    ideal = (math.ceil(n_frames) - 1) * stride + kernel
    return F.pad(x, (0, ideal - length))


def torch_mel_spectrogram(
    x: torch.Tensor,
    n_fft: int,
    sample_rate: int = 24000,
    n_mels: int = 64,
    f_min: float = 64.0,
    f_max: float | None = None,
    normalized: bool = True,
) -> torch.Tensor:
    """audiocraft ``MelSpectrogramWrapper`` (linear): ``[B, 1, N] -> [B, n_mels, frames]``."""
    hop = n_fft // 4
    p = (n_fft - hop) // 2
    x = F.pad(x, (p, p), mode="reflect")
    x = _pad_for_conv1d(x, n_fft, hop)
    spec = torch_stft(x, n_fft, hop, n_fft, normalized)  # [B, 1, F, M]
    power = spec.abs().pow(2)
    fb = torch_mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max).to(x.dtype)
    mel = torch.matmul(power.transpose(-1, -2), fb).transpose(-1, -2)  # [B, 1, n_mels, M]
    return mel.reshape(mel.shape[0], -1, mel.shape[-1])


def torch_msspec_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    sample_rate: int = 24000,
    range_start: int = 6,
    range_end: int = 11,
    n_mels: int = 64,
    f_min: float = 64.0,
    f_max: float | None = None,
    normalized: bool = True,
    alphas: bool = False,
    floor: float = 1e-5,
) -> torch.Tensor:
    """audiocraft ``MultiScaleMelSpectrogramLoss`` (docs/original.md §6.1); ``x``, ``y`` ``[B, 1,
    N]``."""
    loss = x.new_zeros(())
    total = 0.0
    for i in range(range_start, range_end):
        n_fft = 2**i
        alpha = math.sqrt(n_fft - 1) if alphas else 1.0
        mx = torch_mel_spectrogram(x, n_fft, sample_rate, n_mels, f_min, f_max, normalized)
        my = torch_mel_spectrogram(y, n_fft, sample_rate, n_mels, f_min, f_max, normalized)
        l1 = F.l1_loss(mx, my)
        l2 = F.mse_loss(torch.log10(floor + mx), torch.log10(floor + my))
        loss = loss + l1 + alpha * l2
        total += alpha + 1.0
    return loss / total if normalized else loss


def torch_generator_adv_loss(logits_fake: Sequence[torch.Tensor]) -> torch.Tensor:
    """Hinge generator loss ``(1/K) sum_k -mean(D_k(fake))``."""
    return sum(-lg.mean() for lg in logits_fake) / len(logits_fake)


def torch_discriminator_loss(
    logits_real: Sequence[torch.Tensor], logits_fake: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Hinge discriminator loss ``(1/K) sum_k [mean relu(1 - real) + mean relu(1 + fake)]``."""
    total = sum(
        F.relu(1 - r).mean() + F.relu(1 + f).mean()
        for r, f in zip(logits_real, logits_fake, strict=True)
    )
    return total / len(logits_real)


def torch_feature_matching_loss(
    fmaps_fake: Sequence[Sequence[torch.Tensor]], fmaps_real: Sequence[Sequence[torch.Tensor]]
) -> torch.Tensor:
    """L1 feature matching ``(1/K) sum_k (1/L) sum_l mean|f_fake - f_real|`` (real detached)."""
    total = 0.0
    for ff, fr in zip(fmaps_fake, fmaps_real, strict=True):
        total = total + sum(F.l1_loss(a, b.detach()) for a, b in zip(ff, fr, strict=True)) / len(ff)
    return total / len(fmaps_fake)
