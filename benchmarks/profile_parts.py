"""Per-part timings of the training step (``throughput.py --profile``), JAX and PyTorch.

Codec forward and forward+backward, each discriminator scale forward and forward+backward on
real + fake, and msspec forward+backward; medians of a few runs after a warm-up. The PyTorch
parts run on the re-statement of :mod:`amylm_jax.reference.torch_step` (no optimizer steps).
"""

from __future__ import annotations

import statistics
import time
from typing import Any


def time_calls(fn, n: int) -> list[float]:
    """Wall seconds of ``n`` calls of ``fn`` (which must block until its work is done)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def median_ms(fn, n: int = 3) -> float:
    """Median milliseconds of ``n`` calls after one warm-up (compile) call."""
    fn()
    return statistics.median(time_calls(fn, n)) * 1e3


def profile_jax(models: Any, state: Any, batch: dict) -> dict[str, float]:
    """Median times of the step's parts (each jitted alone) at the benchmark batch."""
    import jax
    import jax.numpy as jnp

    from amylm_jax.losses.spectral import msspec_loss
    from amylm_jax.models.discriminator import DiscriminatorSTFT
    from amylm_jax.steps import MEL_CONFIG, generator_forward

    out: dict[str, float] = {}
    key = jax.random.PRNGKey(1)
    gp, cb = state.gen_params, state.codebooks

    def gen(p):
        fake, (wavlm, llm, _, _) = generator_forward(models, p, cb, batch, key)
        return fake, wavlm + llm

    fwd = jax.jit(gen)
    out["codec_fwd"] = median_ms(lambda: jax.block_until_ready(fwd(gp)))

    @jax.jit
    def fwd_bwd(p):
        (fake, distill), vjp = jax.vjp(gen, p)
        return vjp((jnp.ones_like(fake), jnp.ones_like(distill)))

    out["codec_fwd_bwd"] = median_ms(lambda: jax.block_until_ready(fwd_bwd(gp)))

    audio = batch["audio"]
    both = jnp.concatenate([audio, audio * 0.9], axis=0)  # real + fake, as in the shared step
    d = models.cfg.disc
    for k, (n_fft, hop, win) in enumerate(zip(d.n_ffts, d.hop_lengths, d.win_lengths, strict=True)):
        sub = DiscriminatorSTFT(d.filters, n_fft, hop, win, dtype=models.compute_dtype)
        params = state.disc_params[f"discs_{k}"]

        def apply(p, x, sub=sub):
            return sub.apply({"params": p}, x)

        f = jax.jit(apply)
        out[f"disc{n_fft}_fwd"] = median_ms(lambda f=f, p=params: jax.block_until_ready(f(p, both)))

        @jax.jit
        def fb(p, x, apply=apply):
            (lg, fm), vjp = jax.vjp(apply, p, x)
            return vjp((jnp.ones_like(lg), [jnp.ones_like(m) for m in fm]))

        out[f"disc{n_fft}_fwd_bwd"] = median_ms(
            lambda fb=fb, p=params: jax.block_until_ready(fb(p, both))
        )

    ms = jax.jit(jax.value_and_grad(lambda x: msspec_loss(x, audio, MEL_CONFIG)))
    out["msspec_fwd_bwd"] = median_ms(lambda: jax.block_until_ready(ms(audio * 0.9)))
    return out


def profile_torch(trainer: Any, audio: Any) -> dict[str, float]:
    """The PyTorch counterparts of :func:`profile_jax` (same batch; no optimizer steps)."""
    import torch

    from amylm_jax.reference.torch_losses import torch_msspec_loss

    out: dict[str, float] = {}
    sync = torch.cuda.synchronize if audio.is_cuda else (lambda: None)

    def fwd():
        with torch.no_grad():
            trainer.generator_forward(audio)
        sync()

    def fwd_bwd():
        fake, sp = trainer.generator_forward(audio)
        (fake.sum() + sp.x.sum()).backward()
        sync()

    out["codec_fwd"] = median_ms(fwd)
    out["codec_fwd_bwd"] = median_ms(fwd_bwd)
    both = torch.cat([audio, audio * 0.9], dim=0).requires_grad_(True)
    for sub in trainer.disc.discriminators:

        def dfwd(sub=sub):
            with torch.no_grad():
                sub(both)
            sync()

        def dfb(sub=sub):
            lg, fm = sub(both)
            (lg.sum() + sum(m.sum() for m in fm)).backward()
            sync()

        out[f"disc{sub.n_fft}_fwd"] = median_ms(dfwd)
        out[f"disc{sub.n_fft}_fwd_bwd"] = median_ms(dfb)

    def ms():
        x = (audio * 0.9).requires_grad_(True)
        torch_msspec_loss(x, audio).backward()
        sync()

    out["msspec_fwd_bwd"] = median_ms(ms)
    trainer.zero_grad(set_to_none=True)
    return out


# ------------------------------------------------------------------------------ driver
