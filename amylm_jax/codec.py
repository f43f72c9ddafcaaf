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

import dataclasses
import functools
import io
import logging
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from amylm_jax import cli, paths
from amylm_jax.checkpoint import load_codec_from_workdir
from amylm_jax.config import CodecConfig
from amylm_jax.data.audio import AudioError, load_audio, resample, write_wav
from amylm_jax.export.from_torch import load_codec_weights
from amylm_jax.models.amy_codec import AmyCodec, init_codec

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
        return AmyCodec(self.config)

    @functools.cached_property
    def _encode(self):
        model = self._model
        return jax.jit(lambda v, x: model.apply(v, x, method=type(model).encode))

    @functools.cached_property
    def _decode(self):
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
    num_codebooks: int | None = None,
    config: CodecConfig | None = None,
    seed: int = 0,
    ema: bool = False,
) -> LoadedCodec:
    """Build a :class:`LoadedCodec` from a weights file, ``"random"`` or a training workdir."""
    if (weights is None) == (checkpoint is None):
        raise CodecCLIError("pass exactly one of --weights=FILE|random or --checkpoint=WORKDIR")
    if ema and checkpoint is None:
        raise CodecCLIError("--ema takes the moving average kept by a run: pass --checkpoint")
    if checkpoint is not None:
        cfg, variables = load_codec_from_workdir(checkpoint, step=step, ema=ema)
        if num_codebooks:  # default: the count the run trained
            cfg = _with_num_codebooks(cfg, num_codebooks)
        return LoadedCodec(cfg, variables)
    cfg = _with_num_codebooks(config or CodecConfig(), num_codebooks or 9)
    if weights == "random":
        variables = init_codec(cfg, jax.random.PRNGKey(seed))
        variables = _mark_initialized(variables)
        return LoadedCodec(cfg, variables)
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
    try:
        wave, rate = load_audio(path)
    except AudioError as err:
        raise CodecCLIError(str(err)) from None
    return resample(wave, rate, 24000), rate, int(wave.shape[0])


def encode_file(codec: LoadedCodec, wav_in: str, npz_out: str, num_codebooks: int | None = None):
    """Encode one audio file into an ``.npz`` of codes (see the module docstring)."""
    audio, rate, n = read_audio_24k(wav_in)
    codes = codec.encode(audio, num_codebooks)
    buf = io.BytesIO()
    np.savez(
        buf,
        codes=codes,
        num_samples=np.int64(audio.shape[0]),
        sample_rate=24000,
        orig_sample_rate=rate,
        orig_num_samples=n,
    )
    paths.write_bytes(npz_out, buf.getvalue())
    return codes


def read_codes(path: str) -> tuple[np.ndarray, int | None]:
    """Codes ``[K, T]`` and the sample count to trim to, from an ``.npz`` written by encode."""
    try:
        raw = paths.read_bytes(path)
    except FileNotFoundError:
        raise CodecCLIError(f"{path}: codes file not found") from None
    try:
        with np.load(io.BytesIO(raw)) as data:
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


FLAGS = cli.new_flags()
flags.DEFINE_string(
    "weights", None, "Safetensors/PyTorch weights file, or 'random'.", flag_values=FLAGS
)
flags.DEFINE_string(
    "checkpoint", None, "Training workdir (local or URL); uses its latest checkpoint.",
    flag_values=FLAGS,
)  # fmt: skip
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).", flag_values=FLAGS)
flags.DEFINE_bool(
    "ema", False, "--checkpoint: use the run's moving average of the weights.", flag_values=FLAGS
)
flags.DEFINE_integer(
    "num_codebooks",
    None,
    "Codebooks to use. Default: encode uses the run's own count with --checkpoint (9 with "
    "--weights); decode uses all codebooks in the file.",
    flag_values=FLAGS,
)
flags.DEFINE_string("content", None, "swap: wav or npz giving codebooks 0..k-1.", flag_values=FLAGS)
flags.DEFINE_string(
    "voice", None, "swap: wav or npz giving the other codebooks.", flag_values=FLAGS
)
flags.DEFINE_integer(
    "num_swapped", 1, "swap: k (1 = the semantic codebook only).", flag_values=FLAGS
)

_USAGE = {"encode": "encode INPUT OUTPUT.npz", "decode": "decode INPUT.npz OUTPUT.wav",
          "swap": "swap --content=A --voice=B OUTPUT.wav"}  # fmt: skip


def _main(args: list[str]) -> int:
    if not args or args[0] not in _USAGE:
        raise cli.UsageError(f"the first argument is one of {', '.join(_USAGE)}; see --help")
    command, files = args[0], args[1:]
    want = 1 if command == "swap" else 2
    if len(files) != want:
        raise cli.UsageError(f"usage: python -m amylm_jax.codec {_USAGE[command]}")
    if command == "swap" and not (FLAGS.content and FLAGS.voice):
        raise cli.UsageError("swap needs --content=FILE and --voice=FILE")
    codec = load_codec(
        FLAGS.weights,
        FLAGS.checkpoint,
        FLAGS.step,
        num_codebooks=FLAGS.num_codebooks,
        ema=FLAGS.ema,
    )
    if command == "encode":
        codes = encode_file(codec, files[0], files[1], FLAGS.num_codebooks)
        print(f"{files[0]} -> {files[1]}: codes {codes.shape[0]} x {codes.shape[1]}")
    elif command == "decode":
        audio = decode_file(codec, files[0], files[1], FLAGS.num_codebooks)
        print(f"{files[0]} -> {files[1]}: {audio.shape[0] / 24000:.2f} s at 24 kHz")
    else:
        audio = swap_files(codec, FLAGS.content, FLAGS.voice, files[0], FLAGS.num_swapped)
        print(f"{FLAGS.content} + {FLAGS.voice} -> {files[0]}: {audio.shape[0] / 24000:.2f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool on ``argv`` (without the program name); returns the exit status."""
    return cli.run(_main, FLAGS, "amylm_jax.codec", __doc__, argv)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
