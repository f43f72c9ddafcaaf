"""The Amy codec: Kyutai's Mimi with Amy's split (semantic + prosody residual) quantizer.

Data flow of the training forward (docs/original.md §1, §2.7, channels-last):

``audio [B, N]`` -> right-pad to a multiple of 1920 -> SEANet encoder ``[B, T25, 512]`` ->
encoder transformer -> learnt downsample ``emb [B, T, 512]`` (12.5 Hz) -> ``rvq_first`` and
``rvq_rest`` on the same ``emb`` -> ``x_sp + x_ac`` -> depthwise upsample -> decoder
transformer -> SEANet decoder ``[B, T * 1920]`` -> trimmed to ``N``.

Submodule names follow docs/CONTRACTS.md so the PyTorch key map stays a short table.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import struct

from amylm_jax.config import CodecConfig
from amylm_jax.models.conv import pad_for_conv1d
from amylm_jax.models.quantizer import SplitResidualVQ, SplitRVQOutput
from amylm_jax.models.resample import ConvDownsample1d, ConvTrUpsample1d
from amylm_jax.models.seanet import SEANetDecoder, SEANetEncoder
from amylm_jax.models.transformer import Transformer

Dtype = Any


@struct.dataclass
class CodecOutput:
    """Training forward result.

    ``audio`` is the decoded waveform trimmed to the input length ``[B, N]``; ``quantized``
    keeps ``rvq_first`` (``x_sp``, codes 0-1) and ``rvq_rest`` (``x_ac``, codes 2..) apart.
    """

    audio: jax.Array
    quantized: SplitRVQOutput
    latent: jax.Array  # unquantised emb [B, T, C] (input of both RVQs)

    @property
    def codes(self) -> jax.Array:
        return self.quantized.codes


class AmyCodec(nn.Module):
    """Generator of the Amy codec (docs/original.md §2-§3)."""

    config: CodecConfig
    dtype: Dtype = jnp.float32
    # Rematerialise the trainable decoder side in the backward pass (less activation memory).
    remat: bool = False

    def setup(self):
        c = self.config
        if c.transformer.d_model != c.seanet.dimension:
            raise ValueError(
                f"transformer.d_model={c.transformer.d_model} must equal "
                f"seanet.dimension={c.seanet.dimension}"
            )
        if c.quantizer.input_dimension != c.seanet.dimension:
            raise ValueError("quantizer.input_dimension must equal seanet.dimension")
        transpose_method = c.resolved_transpose_method()
        self.encoder = SEANetEncoder(c.seanet, dtype=self.dtype)
        self.encoder_transformer = Transformer(c.transformer, dtype=self.dtype)
        self.downsample = ConvDownsample1d(c.resample_stride, c.seanet.dimension, dtype=self.dtype)
        self.quantizer = SplitResidualVQ(c.quantizer)
        self.upsample = ConvTrUpsample1d(
            c.resample_stride,
            c.seanet.dimension,
            depthwise=c.upsample_depthwise,
            method=transpose_method,
            dtype=self.dtype,
        )
        transformer_cls, decoder_cls = Transformer, SEANetDecoder
        if self.remat:
            transformer_cls, decoder_cls = nn.remat(Transformer), nn.remat(SEANetDecoder)
        self.decoder_transformer = transformer_cls(c.transformer, dtype=self.dtype)
        self.decoder = decoder_cls(c.seanet, dtype=self.dtype, transpose_method=transpose_method)

    # ----------------------------------------------------------------------------- encoder side
    def encode_frames25(self, audio_BxN: jax.Array) -> jax.Array:
        """Frozen part of the encoder: padded audio -> ``[B, T25, C]`` (before downsampling)."""
        if audio_BxN.ndim != 2:
            raise ValueError(f"audio must be [B, N], got shape {audio_BxN.shape}")
        frame = self.config.frame_size
        x = pad_for_conv1d(audio_BxN[..., None], frame, frame)
        h = self.encoder(x)
        return self.encoder_transformer(h)

    def encode_to_latent(self, audio_BxN: jax.Array) -> jax.Array:
        """Unquantised 12.5 Hz latent ``emb [B, T, C]`` (the trainer's encode path)."""
        return self.downsample(self.encode_frames25(audio_BxN))

    def encode(self, audio_BxN: jax.Array) -> jax.Array:
        """Integer codes ``[B, num_codebooks, T]`` (eval mode, no state change)."""
        return self.quantizer.encode(self.encode_to_latent(audio_BxN))

    # ----------------------------------------------------------------------------- decoder side
    def decode_latent(self, emb_q_BxTxC: jax.Array) -> jax.Array:
        """Quantised latent -> waveform ``[B, T * frame_size]`` (not trimmed)."""
        h = self.upsample(emb_q_BxTxC.astype(self.dtype))
        h = self.decoder_transformer(h)
        return self.decoder(h)[..., 0].astype(jnp.float32)

    def decode(self, codes_BxKxT: jax.Array) -> jax.Array:
        """Codes ``[B, k, T]`` (k <= num_codebooks; fewer = a coarser decode) -> ``[B, T*1920]``."""
        return self.decode_latent(self.quantizer.decode(codes_BxKxT))

    def decode_semantic(self, codes_BxKxT: jax.Array) -> jax.Array:
        """LLM-distillation latent ``rvq_first.decode(codes[:, :1])`` ``[B, T, C]``
        (docs/original.md §3.9)."""
        return self.quantizer.decode_semantic(codes_BxKxT)

    def project_semantic(self, vectors_BxTxD: jax.Array) -> jax.Array:
        """``rvq_first``'s output projection of codebook-0 vectors ``[B, T, C]``."""
        return self.quantizer.project_semantic(vectors_BxTxD)

    def semantic_ste(self, emb_BxTxC: jax.Array, codes_BxKxT: jax.Array) -> jax.Array:
        """Codebook-0 straight-through latent (see ``SplitResidualVQ.semantic_ste``)."""
        return self.quantizer.semantic_ste(emb_BxTxC, codes_BxKxT)

    # ----------------------------------------------------------------------------- training path
    def __call__(
        self,
        audio_BxN: jax.Array,
        *,
        train: bool = True,
        train_rest: bool = True,
        frames25: jax.Array | None = None,
        rng: jax.Array | None = None,
        rest_keep: jax.Array | None = None,
        bypass: jax.Array | None = None,
    ) -> CodecOutput:
        """Training (or eval-mode) forward; output audio trimmed to the input length.

        ``frames25`` lets the caller pass a precomputed (e.g. stop-gradient, frozen) encoder
        output so the frozen encoder is not differentiated. ``rng`` is the quantizer's key for
        this call (k-means and dead-code draws, split as ``SplitResidualVQ`` documents); without
        it a training call draws from the ``quantizer`` RNG stream.

        Training tricks: ``rest_keep`` ``[B]`` decodes each example from codebooks 0-1 and its
        first ``rest_keep[b]`` acoustic codebooks (quantizer dropout); ``bypass`` ``[B]`` bool
        sends the unquantized latent to the decoder for the marked examples. Codes, codebook
        updates and the distillation latents are unchanged by both.
        """
        n = audio_BxN.shape[-1]
        if frames25 is None:
            frames25 = self.encode_frames25(audio_BxN)
        emb = self.downsample(frames25)
        quantized = self.quantizer(
            emb, train=train, train_rest=train_rest, rng=rng, rest_keep=rest_keep
        )
        latent = quantized.x
        if bypass is not None:
            if emb.shape[-1] != latent.shape[-1]:
                raise ValueError(
                    f"the quantization bypass needs the quantizer's input and output dimensions "
                    f"equal, got {emb.shape[-1]} and {latent.shape[-1]}"
                )
            latent = jnp.where(bypass[:, None, None], emb.astype(latent.dtype), latent)
        audio = self.decode_latent(latent)
        return CodecOutput(audio=audio[:, :n], quantized=quantized, latent=emb)


def init_codec(config: CodecConfig, key: jax.Array, num_samples: int | None = None) -> dict:
    """Randomly initialise ``{"params", "codebooks"}`` for ``config`` (PyTorch-default init).

    Codebooks start uninitialised (k-means on the first training batch), as a model built
    without a checkpoint does in the original.
    """
    model = AmyCodec(config)
    n = num_samples or config.frame_size

    @jax.jit
    def _init(k):
        return model.init(
            {"params": k, "quantizer": k}, jnp.zeros((1, n), jnp.float32), train=False
        )

    return dict(_init(key))
