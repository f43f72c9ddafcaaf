"""Evaluate a training checkpoint on the full validation clips of its store.

    python -m amylm_jax.evaluate --workdir=runs/demo [--step=N] [--store=PATH|demo] \\
        [--max_clips=N] [--asr_model=LOCAL_PATH] [--out=FILE.json]

Each validation clip (the run's own split: ``config.data`` gives the store, ``val_fraction`` /
``val_clips`` and ``split_seed``; ``--store`` swaps the store) is encoded whole: zero-padded to
a multiple of 1920 samples and then up to a multiple of ``bucket_frames`` frames (one jitted
encode/decode per bucket length bounds the compiles; the codec is causal, so trailing zeros
change nothing before them), decoded with all codebooks, codebooks 0+1 (semantic + prosody)
and codebook 0 alone, and trimmed back to the clip length. Per decode variant the clip means
of SI-SDR, mel distance, multi-scale STFT distance, STOI and PESQ are reported with the
variant's bitrate; per codebook the usage and normalised entropy of the evaluated codes and the
EMA usage of the checkpoint's codebook state (``val/codebook/usage_g`` of training). With
``--asr_model`` (a local transformers ASR model, nothing is downloaded) the corpus WER of each
variant (and of the original audio, the ASR's own floor) against the store transcripts is
added. Definitions: :mod:`amylm_jax.evaluate.metrics`.

Results go to ``--out`` (default ``WORKDIR/eval/step_<N>.json``), to TensorBoard under
``WORKDIR/tensorboard`` as ``eval/<variant>/<metric>`` at the checkpoint's step, and to stdout
as a table.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from absl import flags

from amylm_jax import cli, paths
from amylm_jax.checkpoint import Checkpointer, CheckpointError, resolve_step, restore_run_state
from amylm_jax.data.audio import int16_to_float, resample
from amylm_jax.data.demo import resolve_store
from amylm_jax.data.pipeline import split_clips
from amylm_jax.data.store import open_store
from amylm_jax.evaluate import metrics as em
from amylm_jax.evaluate.metrics import METRICS
from amylm_jax.evaluate.output import _finite, format_table, write_tensorboard
from amylm_jax.metrics import codebook_usage
from amylm_jax.models.amy_codec import AmyCodec
from amylm_jax.state import generator_weights

log = logging.getLogger("amylm_jax.evaluate")

#: ``transcribe(list of mono 24 kHz float32 clips) -> list of transcripts`` (same order).
Transcriber = Callable[[list[np.ndarray]], list[str]]


class EvaluationError(ValueError):
    """A user-facing problem with the run, the store or an option."""


@dataclasses.dataclass(frozen=True)
class Variant:
    """One decode: the first ``num_codebooks`` codebooks."""

    name: str
    num_codebooks: int
    description: str


def decode_variants(num_codebooks: int) -> list[Variant]:
    """All codebooks, codebooks 0+1, codebook 0 (duplicates dropped when K <= 2)."""
    out = [Variant("all", num_codebooks, f"all {num_codebooks} codebooks")]
    for v in (
        Variant("cb0_1", 2, "codebooks 0+1 (semantic + prosody)"),
        Variant("cb0", 1, "codebook 0 (semantic)"),
    ):
        if v.num_codebooks < num_codebooks:
            out.append(v)
    return out


# ------------------------------------------------------------------------------- loading
def _checkpoint_step(workdir: str, step: int | None) -> int:
    if not paths.as_path(workdir).is_dir():
        raise EvaluationError(f"--workdir={workdir}: no such directory")
    try:
        return resolve_step(workdir, step)
    except CheckpointError as err:
        raise EvaluationError(str(err)) from None


def _validation_clips(data_cfg, store_arg: str | None, max_clips: int | None):
    name = store_arg or data_cfg.store
    try:
        store = open_store(resolve_store(name))
        _, val = split_clips(store, dataclasses.replace(data_cfg, store=str(name)))
    except (FileNotFoundError, ValueError) as err:
        raise EvaluationError(str(err)) from None
    if len(val) == 0:
        how = (
            f"val_clips={list(data_cfg.val_clips)}"
            if data_cfg.val_clips
            else f"val_fraction={data_cfg.val_fraction}"
        ) + (f", val_group_by={data_cfg.val_group_by!r}" if data_cfg.val_group_by else "")
        raise EvaluationError(
            f"store {store.path} has no validation clips ({len(store)} clips, {how}); pass a "
            "larger store with --store, or train with a validation split"
        )
    total = len(val)
    if max_clips is not None:
        if max_clips < 1:
            raise EvaluationError(f"--max_clips must be >= 1, got {max_clips}")
        val = val[:max_clips]
    return store, val, total


@functools.cache
def _codec_fns(codec_cfg) -> tuple[Callable, Callable]:
    """Jitted ``encode(vars, audio [1, N])`` / ``decode(vars, codes [1, k, T])`` per config.

    Cached so repeated evaluations of one architecture reuse the compiled bucket shapes.
    """
    model = AmyCodec(codec_cfg)
    enc = jax.jit(lambda v, x: model.apply(v, x, method=AmyCodec.encode))
    dec = jax.jit(lambda v, c: model.apply(v, c, method=AmyCodec.decode))
    return enc, dec


# ------------------------------------------------------------------------------- evaluation
def _mean(values: list[float | None]) -> float | None:
    good = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(good)) if good else None


def _variant_summary(per_clip: list[dict], name: str, n_clips: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    notes: dict[str, str] = {}
    for metric in METRICS:
        rows = [c["variants"][name] for c in per_clip]
        values = [r[metric] for r in rows]
        out[metric] = _mean(values)
        missing = [r for r in rows if r[metric] is None or not math.isfinite(r[metric])]
        if missing:
            reason = next(
                (r.get(f"{metric}_reason") for r in missing if r.get(f"{metric}_reason")),
                "non-finite value",
            )
            notes[metric] = f"{len(missing)} of {n_clips} clip(s) not scored: {reason}"
    out["notes"] = notes
    return out


def score_clips(
    cfg: Any,
    variables: Any,
    st: Any,
    val: Sequence[int],
    *,
    transcriber: Transcriber | None = None,
    asr_name: str | None = None,
    bucket_frames: int = 8,
) -> dict[str, Any]:
    """Encode and decode store records ``val`` at full length with ``variables`` (``params``
    and ``codebooks`` of ``cfg.codec``) and score every decode variant.

    Returns ``{"per_clip", "audio_seconds", "codebooks", "wer", "variants"}`` (the variants'
    means); :func:`evaluate` and the trainer's periodic evaluation share it.
    """
    codec_cfg = cfg.codec
    q = codec_cfg.quantizer
    frame = codec_cfg.frame_size
    enc, dec = _codec_fns(codec_cfg)
    variants = decode_variants(q.num_codebooks)

    per_clip: list[dict[str, Any]] = []
    codes_seen: list[np.ndarray] = []
    asr: dict[str, list[str]] = {"original": [], **{v.name: [] for v in variants}}
    refs: list[str] = []
    for idx in val:
        rec = st[int(idx)]
        audio = int16_to_float(rec["audio"])
        n = audio.size
        frames = -(-n // frame)
        padded = -(-frames // bucket_frames) * bucket_frames
        x = np.zeros((1, padded * frame), np.float32)
        x[0, :n] = audio
        codes = np.asarray(enc(variables, x))
        codes_seen.append(codes[0, :, :frames])
        clip: dict[str, Any] = {
            "clip_id": rec["clip_id"],
            "seconds": n / codec_cfg.sample_rate,
            "variants": {},
        }
        decoded = {}
        for v in variants:
            y = np.asarray(dec(variables, codes[:, : v.num_codebooks]))[0, :n]
            decoded[v.name] = y
            row: dict[str, Any] = {
                "si_sdr": em.si_sdr(audio, y),
                "mel_distance": em.mel_distance(audio, y, codec_cfg.sample_rate),
                "stft_distance": em.stft_distance(audio, y),
            }
            for metric, fn in (("stoi", em.stoi), ("pesq", em.pesq_wb)):
                value, reason = fn(audio, y, codec_cfg.sample_rate)
                row[metric] = value
                if reason:
                    row[f"{metric}_reason"] = reason
            clip["variants"][v.name] = row
        transcript = str(rec.get("transcript", ""))
        if transcriber is not None and em.normalize_text(transcript):
            texts = transcriber([audio, *(decoded[v.name] for v in variants)])
            if len(texts) != len(variants) + 1:
                raise EvaluationError(
                    f"transcriber returned {len(texts)} texts for {len(variants) + 1} inputs"
                )
            refs.append(transcript)
            clip["transcript"] = transcript
            clip["asr"] = dict(zip(asr, texts, strict=True))
            for key, text in clip["asr"].items():
                asr[key].append(str(text))
        per_clip.append(clip)

    all_codes = np.concatenate(codes_seen, axis=1)
    usage, entropy = em.codebook_stats(all_codes, q.bins)
    ema = codebook_usage(jax.device_get(variables["codebooks"]), cfg)
    codebooks = [
        {
            "index": k,
            "usage": float(usage[k]),
            "entropy": float(entropy[k]),
            "ema_usage": ema.get(f"val/codebook/usage_{k}"),
        }
        for k in range(all_codes.shape[0])
    ]

    wer_info: dict[str, Any]
    if transcriber is None:
        wer_info = {"skipped": "no --asr_model given (a local transformers ASR model path)"}
    elif not refs:
        wer_info = {"skipped": "no evaluated clip has a transcript in the store"}
    else:
        wer_info = {
            "asr_model": asr_name or "injected transcriber",
            "clips": len(refs),
            "original": em.corpus_wer(refs, asr["original"]),
        }
    result: dict[str, Any] = {
        "per_clip": per_clip,
        "audio_seconds": float(sum(c["seconds"] for c in per_clip)),
        "codebooks": codebooks,
        "wer": wer_info,
        "variants": {},
    }
    for v in variants:
        summary = {
            "num_codebooks": v.num_codebooks,
            "description": v.description,
            "bitrate_bps": em.bitrate(v.num_codebooks, q.bins, codec_cfg.frame_rate),
            **_variant_summary(per_clip, v.name, len(per_clip)),
        }
        if "original" in wer_info:
            summary["wer"] = em.corpus_wer(refs, asr[v.name])["wer"]
        else:
            summary["wer"] = None
            summary["notes"]["wer"] = wer_info["skipped"]
        result["variants"][v.name] = summary
    return result


def evaluate(
    workdir: str,
    step: int | None = None,
    store: str | None = None,
    max_clips: int | None = None,
    transcriber: Transcriber | None = None,
    asr_name: str | None = None,
    out: str | None = None,
    tensorboard: bool = True,
    bucket_frames: int = 8,
    ema: bool = False,
) -> dict[str, Any]:
    """Evaluate one checkpoint of ``workdir``; returns (and writes) the result dict.

    ``transcriber`` enables WER (see :data:`Transcriber`); it is called once per clip with
    ``[original, *decoded variants]``. ``asr_name`` labels it in the result.
    """
    t0 = time.perf_counter()
    workdir = os.fspath(paths.as_path(workdir))
    if bucket_frames < 1:
        raise EvaluationError(f"bucket_frames must be >= 1, got {bucket_frames}")
    step = _checkpoint_step(workdir, step)
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        cfg = ckpt.restore_config(step)
    finally:
        ckpt.close()
    st, val, n_val = _validation_clips(cfg.data, store, max_clips)
    cfg, state = restore_run_state(workdir, step)
    codec_cfg = cfg.codec
    q = codec_cfg.quantizer
    try:
        params = generator_weights(state, ema)["codec"]
    except ValueError as err:
        raise EvaluationError(str(err)) from None
    variables = jax.device_put({"params": params, "codebooks": state.codebooks})
    scores = score_clips(
        cfg, variables, st, val, transcriber=transcriber, asr_name=asr_name,
        bucket_frames=bucket_frames,
    )  # fmt: skip
    result: dict[str, Any] = {
        "workdir": workdir,
        "step": step,
        "store": str(st.path),
        "clips": {"evaluated": len(val), "validation_total": n_val},
        "audio_seconds": scores["audio_seconds"],
        "frame_rate": codec_cfg.frame_rate,
        "bins": q.bins,
        "bucket_frames": bucket_frames,
        "variants": scores["variants"],
        "codebooks": scores["codebooks"],
        "wer": scores["wer"],
        "settings": em.settings(),
        "per_clip": scores["per_clip"],
    }
    result["wall_seconds"] = time.perf_counter() - t0
    result = _finite(result)

    out = (
        os.fspath(paths.as_path(out))
        if out
        else os.fspath(paths.join(workdir, "eval", f"step_{step}.json"))
    )
    paths.write_text(out, json.dumps(result, indent=1))
    result["out"] = out
    if tensorboard:
        write_tensorboard(paths.join(workdir, "tensorboard"), result)
    return result


# ------------------------------------------------------------------------------- ASR
def hf_transcriber(model_path: str, batch_size: int = 4) -> Transcriber:
    """A :data:`Transcriber` over a local ``transformers`` ASR pipeline (no download)."""
    if not os.path.exists(model_path):
        raise EvaluationError(
            f"--asr_model={model_path}: no such local path (a directory saved with "
            "save_pretrained; nothing is downloaded)"
        )
    from transformers import pipeline  # heavy (torch): only when an ASR model is given

    pipe = pipeline("automatic-speech-recognition", model=model_path, device="cpu")
    rate = int(getattr(pipe.feature_extractor, "sampling_rate", 16000))

    def transcribe(audios: list[np.ndarray]) -> list[str]:
        inputs = [
            {"raw": resample(np.asarray(a, np.float32), 24000, rate), "sampling_rate": rate}
            for a in audios
        ]
        kw: dict[str, Any] = {"batch_size": batch_size}
        if max(x["raw"].size for x in inputs) > 30 * rate:
            kw["chunk_length_s"] = 30
        return [str(o["text"]) for o in pipe(inputs, **kw)]

    return transcribe


# ------------------------------------------------------------------------------- entry point
FLAGS = cli.new_flags()
flags.DEFINE_string("workdir", None, "Training run directory (local or URL).", flag_values=FLAGS)
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).", flag_values=FLAGS)
flags.DEFINE_string(
    "store", None, "Feature store PATH or demo (default: the run's).", flag_values=FLAGS
)
flags.DEFINE_integer(
    "max_clips", None, "Evaluate the first N validation clips only.", flag_values=FLAGS
)
flags.DEFINE_string(
    "asr_model", None, "Local transformers ASR model (enables WER).", flag_values=FLAGS
)
flags.DEFINE_string(
    "out", None, "Result JSON (default: WORKDIR/eval/step_N.json).", flag_values=FLAGS
)
flags.DEFINE_integer("bucket_frames", 8, "Pad clips to multiples of N frames.", flag_values=FLAGS)
flags.DEFINE_bool(
    "tensorboard", True, "Write the scalars to WORKDIR/tensorboard.", flag_values=FLAGS
)
flags.DEFINE_bool(
    "ema", False, "Evaluate the moving average of the weights (optim.ema_decay > 0).",
    flag_values=FLAGS,
)  # fmt: skip


def _main(args: list[str]) -> int:
    if args:
        raise cli.UsageError(f"unexpected arguments {args}; see --help")
    if not FLAGS.workdir:
        raise cli.UsageError("--workdir is required")
    transcriber = hf_transcriber(FLAGS.asr_model) if FLAGS.asr_model else None
    result = evaluate(
        FLAGS.workdir,
        step=FLAGS.step,
        store=FLAGS.store,
        max_clips=FLAGS.max_clips,
        transcriber=transcriber,
        asr_name=FLAGS.asr_model,
        out=FLAGS.out,
        tensorboard=FLAGS.tensorboard,
        bucket_frames=FLAGS.bucket_frames,
        ema=FLAGS.ema,
    )
    print(format_table(result))
    if "skipped" in result["wer"]:
        print(f"WER skipped: {result['wer']['skipped']}")
    print(f"wrote {result['out']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool on ``argv`` (without the program name); returns the exit status."""
    return cli.run(_main, FLAGS, "amylm_jax.evaluate", __doc__, argv)
