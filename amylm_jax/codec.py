"""Codec command line: encode audio to codes, decode codes to audio, swap codebooks.

Examples::

    python -m amylm_jax.codec encode --weights=mimi.safetensors speech.wav speech.npz
    python -m amylm_jax.codec decode --weights=mimi.safetensors speech.npz speech_24k.wav
    python -m amylm_jax.codec swap --weights=amy.safetensors \\
        --content=a.wav --voice=b.wav --num_swapped=1 out.wav

``--weights`` is a Kyutai Mimi (32 slots) or Amy (33 slots) safetensors / PyTorch file, or
``random`` (seeded random weights: exercises the pipeline, sounds like noise). ``--checkpoint``
takes a training workdir instead and uses its latest (or ``--step``) checkpoint.
Any input rate and channel count is accepted (downmixed, resampled to 24 kHz with soxr).
The ``.npz`` holds ``codes`` (int32 ``[K, T]``), ``num_samples`` (24 kHz samples to keep
when decoding), ``sample_rate`` (24000) and the source's ``orig_sample_rate`` /
``orig_num_samples``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import sys
from collections.abc import Sequence

import numpy as np

from amylm_jax.config import CodecConfig

log = logging.getLogger("amylm_jax.codec")


class CodecCLIError(ValueError):
    """A user-facing error of the codec tool (bad file, bad option)."""


@dataclasses.dataclass
class LoadedCodec:
    """A codec model with its variables and jitted encode/decode functions."""

    config: CodecConfig
    variables: dict

    @functools.cached_property
    def _model(self):
        from amylm_jax.models.codec import AmyCodec

        return AmyCodec(self.config)

    @functools.cached_property
    def _encode(self):
        import jax

        model = self._model
        return jax.jit(lambda v, x: model.apply(v, x, method=type(model).encode))

    @functools.cached_property
    def _decode(self):
        import jax

        model = self._model
        return jax.jit(lambda v, c: model.apply(v, c, method=type(model).decode))

    def encode(self, audio_24k: np.ndarray, num_codebooks: int | None = None) -> np.ndarray:
        """Mono 24 kHz float audio ``[N]`` -> codes ``[K, T]`` int32."""
        codes = np.asarray(self._encode(self.variables, np.asarray(audio_24k, np.float32)[None]))
        k = num_codebooks or codes.shape[1]
        return codes[0, :k].astype(np.int32)

    def decode(self, codes_KxT: np.ndarray) -> np.ndarray:
        """Codes ``[K, T]`` (any K up to the slot count) -> 24 kHz audio ``[T * 1920]``."""
        codes = np.asarray(codes_KxT, np.int32)
        limit = self.config.quantizer.n_q
        if codes.ndim != 2 or codes.shape[0] < 1 or codes.shape[0] > limit:
            raise CodecCLIError(f"codes must be [K, T] with 1 <= K <= {limit}, got {codes.shape}")
        bins = self.config.quantizer.bins
        if codes.size and (codes.min() < 0 or codes.max() >= bins):
            raise CodecCLIError(
                f"codes must lie in [0, {bins}), got [{codes.min()}, {codes.max()}]"
            )
        return np.asarray(self._decode(self.variables, codes[None]))[0]


def load_codec(
    weights: str | None = None,
    checkpoint: str | None = None,
    step: int | None = None,
    num_codebooks: int = 9,
    config: CodecConfig | None = None,
    seed: int = 0,
) -> LoadedCodec:
    """Build a :class:`LoadedCodec` from a weights file, ``"random"`` or a training workdir."""
    if (weights is None) == (checkpoint is None):
        raise CodecCLIError("pass exactly one of --weights=FILE|random or --checkpoint=WORKDIR")
    if checkpoint is not None:
        from amylm_jax.checkpoint import load_codec_from_workdir

        cfg, variables = load_codec_from_workdir(checkpoint, step=step)
        cfg = _with_num_codebooks(cfg, num_codebooks)
        return LoadedCodec(cfg, variables)
    cfg = _with_num_codebooks(config or CodecConfig(), num_codebooks)
    if weights == "random":
        import jax

        from amylm_jax.models.codec import init_codec

        variables = init_codec(cfg, jax.random.PRNGKey(seed))
        variables = _mark_initialized(variables)
        return LoadedCodec(cfg, variables)
    from amylm_jax.export.from_torch import load_codec_weights

    variables, report = load_codec_weights(weights, cfg)
    if report.missing:
        log.warning(
            "%s: %d tensors missing (defaults used): %s",
            weights,
            len(report.missing),
            ", ".join(report.missing),
        )
    if report.unexpected:
        log.warning(
            "%s: %d unexpected tensors ignored: %s",
            weights,
            len(report.unexpected),
            ", ".join(report.unexpected),
        )
    return LoadedCodec(cfg, variables)


def _with_num_codebooks(cfg: CodecConfig, num_codebooks: int) -> CodecConfig:
    try:
        quantizer = dataclasses.replace(cfg.quantizer, num_codebooks=num_codebooks)
    except ValueError as err:
        raise CodecCLIError(f"--num_codebooks: {err}") from None
    return dataclasses.replace(cfg, quantizer=quantizer)


def _mark_initialized(variables: dict) -> dict:
    """Random codebooks for ``--weights=random``: random centroids, marked initialised."""
    import jax
    import jax.numpy as jnp

    key = jax.random.PRNGKey(1)

    def fill(path, leaf):
        nonlocal key
        name = path[-1].key
        if name == "embedding_sum":
            key, sub = jax.random.split(key)
            return jax.random.normal(sub, leaf.shape, leaf.dtype)
        if name == "initialized":
            return jnp.ones_like(leaf)
        return leaf

    codebooks = jax.tree_util.tree_map_with_path(fill, variables["codebooks"])
    return {**variables, "codebooks": codebooks}


def read_audio_24k(path: str) -> tuple[np.ndarray, int, int]:
    """Load any audio file as mono 24 kHz float32; returns (audio, orig_rate, orig_samples)."""
    from amylm_jax.data.audio import AudioError, load_audio, resample

    try:
        wave, rate = load_audio(path)
    except AudioError as err:
        raise CodecCLIError(str(err)) from None
    return resample(wave, rate, 24000), rate, int(wave.shape[0])


def encode_file(codec: LoadedCodec, wav_in: str, npz_out: str, num_codebooks: int | None = None):
    """Encode one audio file into an ``.npz`` of codes (see the module docstring)."""
    audio, rate, n = read_audio_24k(wav_in)
    codes = codec.encode(audio, num_codebooks)
    _makedirs_for(npz_out)
    np.savez(
        npz_out,
        codes=codes,
        num_samples=np.int64(audio.shape[0]),
        sample_rate=24000,
        orig_sample_rate=rate,
        orig_num_samples=n,
    )
    return codes


def read_codes(path: str) -> tuple[np.ndarray, int | None]:
    """Codes ``[K, T]`` and the sample count to trim to, from an ``.npz`` written by encode."""
    if not os.path.isfile(path):
        raise CodecCLIError(f"{path}: codes file not found")
    try:
        with np.load(path) as data:
            if "codes" not in data:
                raise CodecCLIError(f"{path}: no 'codes' array (written by `codec encode`?)")
            codes = np.asarray(data["codes"])
            n = int(data["num_samples"]) if "num_samples" in data else None
    except (OSError, ValueError) as err:
        if isinstance(err, CodecCLIError):
            raise
        raise CodecCLIError(f"{path}: cannot read codes ({err})") from None
    if codes.ndim != 2 or codes.shape[1] == 0:
        raise CodecCLIError(f"{path}: codes must be a non-empty [K, T] array, got {codes.shape}")
    return codes, n


def decode_file(
    codec: LoadedCodec, npz_in: str, wav_out: str, num_codebooks: int | None = None
) -> np.ndarray:
    """Decode an ``.npz`` of codes to a 24 kHz wav, trimmed to the encoded length."""
    codes, n = read_codes(npz_in)
    if num_codebooks:
        codes = codes[:num_codebooks]
    audio = codec.decode(codes)
    if n is not None:
        audio = audio[:n]
    write_wav(wav_out, audio)
    return audio


def _codes_of(codec: LoadedCodec, path: str) -> tuple[np.ndarray, int | None]:
    if path.endswith(".npz"):
        return read_codes(path)
    audio, _, _ = read_audio_24k(path)
    return codec.encode(audio), int(audio.shape[0])


def swap_files(
    codec: LoadedCodec, content: str, voice: str, wav_out: str, num_swapped: int = 1
) -> np.ndarray:
    """Codebooks ``0..num_swapped-1`` from ``content`` with the rest from ``voice``, decoded.

    The original's voice-transfer use: codebook 0 carries the semantic content, the acoustic
    codebooks the voice. The result has the content's length, truncated to the shorter input.
    """
    codes_c, n_c = _codes_of(codec, content)
    codes_v, _ = _codes_of(codec, voice)
    if not 1 <= num_swapped < codes_c.shape[0]:
        raise CodecCLIError(f"--num_swapped must lie in [1, {codes_c.shape[0] - 1}]")
    if codes_v.shape[0] != codes_c.shape[0]:
        raise CodecCLIError(
            f"{content} has {codes_c.shape[0]} codebooks, {voice} has {codes_v.shape[0]}"
        )
    t = min(codes_c.shape[1], codes_v.shape[1])
    if codes_c.shape[1] != codes_v.shape[1]:
        log.warning(
            "inputs have %d and %d frames; using the first %d",
            codes_c.shape[1],
            codes_v.shape[1],
            t,
        )
    codes = np.concatenate([codes_c[:num_swapped, :t], codes_v[num_swapped:, :t]], axis=0)
    audio = codec.decode(codes)
    if n_c is not None:
        audio = audio[: min(n_c, audio.shape[0])]
    write_wav(wav_out, audio)
    return audio


def write_wav(path: str, audio: np.ndarray, rate: int = 24000) -> None:
    """Write float audio as 16-bit PCM wav (creating the directory)."""
    import soundfile as sf

    _makedirs_for(path)
    sf.write(path, np.clip(np.asarray(audio, np.float32), -1.0, 1.0), rate, subtype="PCM_16")


def _makedirs_for(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m amylm_jax.codec",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--weights", help="safetensors/PyTorch weights file, or 'random'")
        sp.add_argument("--checkpoint", help="training workdir (uses its latest checkpoint)")
        sp.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
        sp.add_argument(
            "--num_codebooks",
            type=int,
            default=None,
            help="codebooks to use (default 9 for encode, all given for decode)",
        )

    enc = sub.add_parser("encode", help="audio file -> codes .npz")
    common(enc)
    enc.add_argument("input")
    enc.add_argument("output")
    dec = sub.add_parser("decode", help="codes .npz -> 24 kHz wav")
    common(dec)
    dec.add_argument("input")
    dec.add_argument("output")
    swp = sub.add_parser("swap", help="content codebooks from one file, the rest from another")
    common(swp)
    swp.add_argument("--content", required=True, help="wav or npz giving codebooks 0..k-1")
    swp.add_argument("--voice", required=True, help="wav or npz giving the other codebooks")
    swp.add_argument("--num_swapped", type=int, default=1, help="k (1 = semantic only)")
    swp.add_argument("output")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        codec = load_codec(
            args.weights, args.checkpoint, args.step, num_codebooks=args.num_codebooks or 9
        )
        if args.command == "encode":
            codes = encode_file(codec, args.input, args.output, args.num_codebooks)
            print(f"{args.input} -> {args.output}: codes {codes.shape[0]} x {codes.shape[1]}")
        elif args.command == "decode":
            audio = decode_file(codec, args.input, args.output, args.num_codebooks)
            print(f"{args.input} -> {args.output}: {audio.shape[0] / 24000:.2f} s at 24 kHz")
        else:
            audio = swap_files(codec, args.content, args.voice, args.output, args.num_swapped)
            print(f"{args.content} + {args.voice} -> {args.output}: {audio.shape[0] / 24000:.2f} s")
    except (CodecCLIError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
