"""Alternative formulations of the step's parts, timed side by side on this backend.

    python benchmarks/formulations.py --config=configs/adapt.py --batch=4 --seconds=1.0 \\
        [--reps=5] [--only=decoder,disc,stft,vq,encoder] [--json=OUT.json]

Each row is one part of the training step at full size, jitted alone, in the two (or more)
numerically equivalent formulations ``amylm_jax`` implements; the median over ``--reps`` runs
after one warm-up. "fwd+bwd" is the forward plus the VJP the training step needs.

- ``decoder``: SEANet decoder (transposed convs) ``dilated`` vs ``polyphase``
  (``CodecConfig.transpose_method``).
- ``disc``: the five-scale discriminator on real + fake (``2 B`` examples), gradient to the
  parameters and the audio, ``lax`` vs ``s2d`` vs ``s2d_full`` (``DiscConfig.conv_method``).
- ``stft``: the multi-scale mel loss, ``jnp.fft.rfft`` vs a DFT matmul at HIGHEST precision
  (``amylm_jax.losses.spectral.rfft_frames``).
- ``vq``: the codebook EMA statistics of one training call (``B * frames`` vectors, 2048
  bins), ``segment_sum`` scatter-add vs a one-hot matmul (HIGHEST precision), and the
  nearest-code search.
- ``encoder``: the codec forward + backward with the encoder frozen (its forward under
  ``stop_gradient``, no saved activations) vs trainable.

The table says which variant is faster here; the configs' ``"auto"`` choices per backend are
documented in ``amylm_jax/config.py`` and the figures in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
SECTIONS = ("decoder", "disc", "stft", "vq", "encoder")


def _define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).")
    flags.DEFINE_integer("batch", 4, "Batch size (examples of `seconds` audio).")
    flags.DEFINE_float("seconds", 1.0, "Crop length in seconds.")
    flags.DEFINE_integer("reps", 5, "Timed runs per variant (median reported).")
    flags.DEFINE_list("only", list(SECTIONS), f"Sections to run, from {SECTIONS}.")
    flags.DEFINE_string("json", None, "Write the results here.")


def median_ms(fn: Callable[[], Any], reps: int) -> float:
    """Median wall time of ``fn()`` (blocked until ready) over ``reps`` runs after a warm-up."""
    import jax
    from profile_parts import median_ms

    return median_ms(lambda: jax.block_until_ready(fn()), reps)


def _fwd_and_grad(f: Callable, args: tuple, argnums: tuple[int, ...], reps: int) -> dict:
    """Times of ``f(*args)`` (a scalar) and of its value-and-gradient w.r.t. ``argnums``."""
    import jax

    fwd = jax.jit(f)
    both = jax.jit(jax.value_and_grad(f, argnums=argnums))
    return {
        "fwd_ms": median_ms(lambda: fwd(*args), reps),
        "fwd_bwd_ms": median_ms(lambda: both(*args), reps),
    }


def bench_decoder(cfg, audio, reps: int) -> dict:
    import jax
    import jax.numpy as jnp

    from amylm_jax.models.seanet import SEANetDecoder

    frames = audio.shape[1] // cfg.codec.seanet.hop_length
    shape = (audio.shape[0], frames, cfg.codec.seanet.dimension)
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    out = {}
    for method in ("dilated", "polyphase"):
        dec = SEANetDecoder(cfg.codec.seanet, transpose_method=method)
        params = dec.init(jax.random.PRNGKey(0), x[:1])

        def loss(p, x, dec=dec):
            return jnp.mean(jnp.square(dec.apply(p, x)))

        out[method] = _fwd_and_grad(loss, (params, x), (0, 1), reps)
    return out


def bench_disc(cfg, audio, reps: int) -> dict:
    import jax
    import jax.numpy as jnp

    from amylm_jax.models.discriminator import MultiScaleSTFTDiscriminator

    d = cfg.disc
    both = jnp.concatenate([audio, 0.9 * audio[::-1]], axis=0)  # real + fake
    out = {}
    params = None
    for method in ("lax", "s2d", "s2d_full"):
        disc = MultiScaleSTFTDiscriminator(
            d.filters, d.n_ffts, d.hop_lengths, d.win_lengths, conv_method=method
        )
        if params is None:
            params = disc.init(jax.random.PRNGKey(0), both[:1, :4096])

        def loss(p, x, disc=disc):
            logits, fmaps = disc.apply(p, x)
            return sum(jnp.mean(lg) for lg in logits) + sum(
                jnp.mean(jnp.abs(f)) for fm in fmaps for f in fm
            )

        out[method] = _fwd_and_grad(loss, (params, both), (0, 1), reps)
    return out


def bench_stft(cfg, audio, reps: int) -> dict:
    import jax.numpy as jnp

    from amylm_jax.losses.spectral import msspec_loss
    from amylm_jax.steps import MEL_CONFIG

    fake = 0.9 * audio + 0.01 * jnp.roll(audio, 7, axis=1)
    out = {}
    for method in ("fft", "matmul"):

        def loss(x, y, method=method):
            return msspec_loss(x, y, MEL_CONFIG, method=method)

        out[method] = _fwd_and_grad(loss, (fake, audio), (0,), reps)
    return out


def bench_vq(cfg, audio, reps: int) -> dict:
    import jax
    import jax.numpy as jnp

    from amylm_jax.models.vq_kmeans import cluster_stats, nearest_codes

    q = cfg.codec.quantizer
    frames = -(-audio.shape[1] // cfg.codec.frame_size)
    m = audio.shape[0] * frames
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (m, q.dimension))
    centroids = jax.random.normal(jax.random.fold_in(key, 1), (q.bins, q.dimension))
    codes = nearest_codes(x, centroids)
    hi = jax.lax.Precision.HIGHEST

    def one_hot_stats(x, codes):
        onehot = jax.nn.one_hot(codes, q.bins, dtype=jnp.float32)
        return jnp.sum(onehot, axis=0), jnp.matmul(onehot.T, x, precision=hi)

    seg = jax.jit(lambda x, c: cluster_stats(x, c, q.bins))
    oh = jax.jit(one_hot_stats)
    near = jax.jit(nearest_codes)
    ref, alt = seg(x, codes), oh(x, codes)
    err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(ref, alt, strict=True))
    return {
        "segment_sum": {"fwd_ms": median_ms(lambda: seg(x, codes), reps)},
        "one_hot_matmul": {"fwd_ms": median_ms(lambda: oh(x, codes), reps), "max_abs_diff": err},
        "nearest_codes": {"fwd_ms": median_ms(lambda: near(x, centroids), reps)},
        "vectors": m,
    }


def bench_encoder(cfg, audio, reps: int) -> dict:
    import jax
    import jax.numpy as jnp

    from amylm_jax.reference.jax_setup import LLM_DIM, WAVLM_DIM, jax_setup, make_batch
    from amylm_jax.steps import generator_forward

    out = {}
    for name, frozen in (("frozen", cfg.frozen), ("trainable", ())):
        c = dataclasses.replace(cfg, frozen=frozen)
        models, state = jax_setup(c, 0)
        batch = jax.device_put(
            make_batch(
                c, audio.shape[0], audio.shape[1] / c.codec.sample_rate, 0, WAVLM_DIM, LLM_DIM
            )
        )

        def loss(gp, models=models, state=state, batch=batch):
            fake, (wavlm, llm, _, _) = generator_forward(
                models, gp, state.codebooks, batch, jax.random.PRNGKey(0)
            )
            return jnp.mean(jnp.square(fake)) + wavlm + llm

        out[name] = _fwd_and_grad(loss, (state.gen_params,), (0,), reps)
    return out


BENCHES = {
    "decoder": bench_decoder,
    "disc": bench_disc,
    "stft": bench_stft,
    "vq": bench_vq,
    "encoder": bench_encoder,
}


def _table(results: dict) -> str:
    rows = [f"{'part':10s} {'variant':16s} {'fwd (ms)':>10s} {'fwd+bwd (ms)':>13s}"]
    for section, variants in results.items():
        if section.startswith("_"):
            continue
        for name, r in variants.items():
            if not isinstance(r, dict):
                continue
            fb = r.get("fwd_bwd_ms")
            fb_s = f"{fb:13.1f}" if fb is not None else f"{'-':>13s}"
            rows.append(f"{section:10s} {name:16s} {r['fwd_ms']:10.1f} {fb_s}")
    return "\n".join(rows)


def main(argv: list[str]) -> None:
    del argv
    import jax
    import numpy as np

    from amylm_jax.reference.inputs import train_config

    unknown = sorted(set(FLAGS.only) - set(SECTIONS))
    if unknown:
        raise app.UsageError(f"--only: unknown sections {unknown}; choose from {SECTIONS}")
    cfg = train_config(FLAGS.config)
    n = int(round(FLAGS.seconds * cfg.codec.sample_rate))
    rng = np.random.default_rng(0)
    audio = jax.numpy.asarray((0.1 * rng.standard_normal((FLAGS.batch, n))).astype(np.float32))
    results: dict[str, Any] = {
        "_meta": {
            "device": jax.devices()[0].device_kind,
            "backend": jax.default_backend(),
            "batch": FLAGS.batch,
            "seconds": FLAGS.seconds,
            "reps": FLAGS.reps,
        }
    }
    for section in SECTIONS:
        if section in FLAGS.only:
            print(f"timing {section} ...", flush=True)
            results[section] = BENCHES[section](cfg, audio, FLAGS.reps)
    print(_table(results))
    if FLAGS.json:
        Path(FLAGS.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
