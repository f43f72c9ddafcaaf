"""The original training step re-stated in PyTorch (docs/original.md §7.3), for the
benchmarks and the fidelity test.

The model is moshi's Mimi with Amy's 33-slot split quantizer (``rvq_first`` = semantic +
prosody residual, ``rvq_rest`` = 31 acoustic slots of which ``num_codebooks - 2`` run), the
``wavlm_proj`` / ``llm_proj`` linear heads and the MS-STFT discriminator. One call of
:meth:`TorchTrainer.train_step` is the original's manual optimisation, in its order:

1. generator forward in training mode (moshi's codebooks do their EMA / expiry in place),
2. generator step: discriminator read-only, ``D(fake)`` with gradient to the audio and
   ``D(real)`` under no-grad for feature matching, the two cosine distillation losses, msspec;
   ``loss_g`` backward, global-norm clip (1.0) over the trainable generator parameters,
   Adam(3e-4, (0.5, 0.9)),
3. discriminator step: ``D(fake.detach())`` and ``D(real)`` again (four discriminator
   forwards per step in all), hinge loss, unclipped Adam.

The SEANet encoder and the encoder transformer are frozen (``requires_grad=False``).

The discriminator, STFT, msspec and the hinge / feature-matching losses are the PyTorch
re-statements of :mod:`amylm_jax.reference.torch_losses` (written from docs/original.md
§5-§6).

:func:`load_jax_state` copies a JAX :class:`~amylm_jax.state.TrainState` (generator,
codebooks, heads, discriminator) into a :class:`TorchTrainer`; :func:`torch_to_jax` converts
back, and :func:`jax_torch_layout` / :func:`torch_layout` give both sides as PyTorch-layout
numpy dicts (parameters, codebook buffers and the Adam moments) for comparisons.

:func:`quantizer_draws` lists the row indices a JAX training step draws for k-means and for
dead-code replacement, slot by slot; inside :func:`injected_draws` moshi's codebooks take
those rows instead of drawing from torch's generator, so both sides of a many-step comparison
make the same random choices; inside :func:`tie_rule` they also resolve ties between near-equal
centroids as the JAX side does with ``quantizer.tie_rtol``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from amylm_jax.config import LOSS_NAMES, CodecConfig, TrainConfig
from amylm_jax.export.disc_layout import disc_from_torch, disc_to_torch
from amylm_jax.export.from_torch import flax_to_torch, torch_to_flax
from amylm_jax.models.heads import head_from_torch, head_to_torch
from amylm_jax.reference.mimi import moshi_config
from amylm_jax.reference.torch_losses import (
    TorchMSSTFTDiscriminator,
    torch_discriminator_loss,
    torch_feature_matching_loss,
    torch_generator_adv_loss,
    torch_msspec_loss,
)


# ------------------------------------------------------------------------------ the codec
def build_torch_codec(codec: CodecConfig, device: str = "cpu") -> nn.Module:
    """moshi Mimi with Amy's split quantizer (``n_q`` slots, ``n_q_first`` in ``rvq_first``).

    Weights are moshi's random init; load real ones with :func:`load_jax_state`.
    """
    from moshi.models.loaders import get_mimi
    from moshi.quantization.vq import SplitResidualVectorQuantizer

    if not codec.upsample_depthwise:
        raise NotImplementedError("moshi's Mimi only has the depthwise (channel-wise) upsample")
    q = codec.quantizer
    mimi_cfg = moshi_config(codec)
    n_books = min(8, mimi_cfg["quantizer"]["n_q"])  # moshi's own quantizer, replaced below
    model = get_mimi(None, mimi_config=mimi_cfg, device=device, num_codebooks=n_books)
    model.quantizer = SplitResidualVectorQuantizer(
        n_q=q.n_q,
        n_q_semantic=q.n_q_first,
        dimension=q.dimension,
        input_dimension=q.input_dimension,
        output_dimension=q.output_dimension,
        bins=q.bins,
        decay=q.decay,
        threshold_usage_ratio=q.threshold_usage_ratio,
        replaced_usage_ratio=q.replaced_usage_ratio,
    ).to(device)
    model.set_num_codebooks(q.num_codebooks)
    for cb in _codebooks(model).values():
        # docs/original.md §3.4 step 4: expired codes are replaced by samples of ``X.detach()``.
        # moshi
        # passes the live ``X``, so the in-place write into ``embedding_sum`` records an
        # autograd graph, and the next step's backward (through the LLM branch's decode)
        # runs into the previous step's freed graph.
        cb._check_expired_codes = _detached(cb._check_expired_codes)
    return model


def _detached(check):
    def wrapper(batch_samples: torch.Tensor) -> torch.Tensor:
        return check(batch_samples.detach())

    return wrapper


def _codebooks(model: nn.Module) -> dict[str, nn.Module]:
    """``{state-dict prefix: EuclideanCodebook}`` for every slot of the split quantizer."""
    from moshi.quantization.core_vq import EuclideanCodebook

    return {
        f"quantizer.{name}.": mod
        for name, mod in model.quantizer.named_modules()
        if isinstance(mod, EuclideanCodebook)
    }


def _check_ref_optim(cfg: TrainConfig) -> None:
    o = cfg.optim
    extra = (o.lr_rvq, o.lr_heads, o.heads_b1, o.heads_b2)
    if o.optimizer != "adam" or any(v is not None for v in extra) or o.rvq_warmup_steps:
        raise NotImplementedError("the PyTorch baseline implements the REF optimisers only")
    if o.clip_d > 0 or o.weight_decay:
        raise NotImplementedError("the PyTorch baseline implements the REF optimisers only")
    if cfg.codec.quantizer.prosody_topology != "residual":
        raise NotImplementedError("the PyTorch baseline implements the residual prosody only")
    lc = cfg.loss
    if lc.llm_latent != "codebook0" or lc.layernorm or lc.mask_padded_frames or not lc.gan:
        raise NotImplementedError("the PyTorch baseline implements the REF losses only")
    if lc.llm_detach_latent or lc.wavlm_semantic_detach or lc.center_wavlm_target:
        raise NotImplementedError("the PyTorch baseline implements the REF losses only")
    if cfg.heads.wavlm != "linear" or cfg.heads.llm != "linear" or not cfg.train_rest_codebooks:
        raise NotImplementedError("the PyTorch baseline implements the REF heads only")


# ------------------------------------------------------------------------------ random draws
def quantizer_draws(cfg: TrainConfig, key: Any, num_samples: int) -> list[dict[str, np.ndarray]]:
    """The index draws of every active codebook slot in one JAX training step.

    ``key`` is the step's quantizer key (:func:`amylm_jax.steps.step_key`) and
    ``num_samples`` the number of latent frames in the batch. The split follows the quantizer:
    (``rvq_first``, ``rvq_rest``) keys, one key per slot of each, then (k-means, dead-code) keys
    per slot. Returns one ``{"kmeans": [iters + 1, bins], "expiry": [bins]}`` per active slot
    in the order the codebooks run (``rvq_first`` slots, then ``rvq_rest`` slots).
    """
    import jax

    from amylm_jax.models.vq_codebook import expiry_candidate_indices
    from amylm_jax.models.vq_kmeans import codebook_keys, kmeans_sample_indices

    q = cfg.codec.quantizer
    key_first, key_rest = jax.random.split(key)
    out = []
    for sub_key, n_slots, n_active in (
        (key_first, q.n_q_first, q.n_q_first),
        (key_rest, q.n_q_rest, q.num_codebooks - q.n_q_first),
    ):
        slot_keys = jax.random.split(sub_key, n_slots)
        for slot in range(n_active):
            kmeans_key, expiry_key = codebook_keys(slot_keys[slot])
            km = kmeans_sample_indices(kmeans_key, num_samples, q.bins, q.kmeans_iters)
            ex = expiry_candidate_indices(expiry_key, num_samples, q.bins)
            out.append({"kmeans": np.asarray(km), "expiry": np.asarray(ex)})
    return out


@contextlib.contextmanager
def injected_draws(trainer: TorchTrainer, draws: list[dict[str, np.ndarray]]):
    """Within the block, moshi's codebooks take their k-means and dead-code rows from ``draws``.

    ``draws`` as :func:`quantizer_draws` gives them, for one training step. moshi samples rows
    with ``_sample_vectors`` (``randperm`` prefix or ``randint``, the same rule as the JAX
    side): once for the initial means and once per k-means iteration, and once when the
    dead-code check fires. Each active codebook consumes its own slot's rows in that order; on
    leaving the block every k-means that ran consumed exactly its ``iters + 1`` rows.
    """
    from moshi.quantization import core_vq

    active = _active_codebooks(trainer.codec)
    if len(active) != len(draws):
        raise ValueError(f"{len(draws)} draws for {len(active)} active codebooks")
    if trainer.cfg.codec.quantizer.kmeans_iters != 50:
        raise NotImplementedError("moshi's codebooks run 50 k-means iterations")
    sample_vectors, run_kmeans = core_vq._sample_vectors, core_vq._run_kmeans
    now: dict[str, Any] = {"kmeans": None, "expiry": None, "in_kmeans": False}

    def sample(samples: torch.Tensor, num: int) -> torch.Tensor:
        queue = now["kmeans"] if now["in_kmeans"] else now["expiry"]
        if not queue:
            raise RuntimeError("a codebook drew more rows than the JAX step did")
        rows = queue.pop(0)
        if rows.shape != (num,) or rows.max() >= samples.shape[0]:
            raise RuntimeError(f"draw of shape {rows.shape} for {num} of {samples.shape[0]} rows")
        return samples[torch.from_numpy(rows.astype(np.int64))]

    def kmeans(samples: torch.Tensor, num_clusters: int, num_iters: int = 50):
        if len(now["kmeans"]) != num_iters + 1:
            raise RuntimeError("k-means ran twice in one codebook call")
        now["in_kmeans"] = True
        try:
            return run_kmeans(samples, num_clusters, num_iters)
        finally:
            now["in_kmeans"] = False
            if now["kmeans"]:
                raise RuntimeError(f"k-means left {len(now['kmeans'])} draws unused")

    def wrap(cb: nn.Module, slot_draws: dict[str, np.ndarray]):
        forward = cb.forward

        def call(*args, **kwargs):
            now["kmeans"] = list(slot_draws["kmeans"])
            now["expiry"] = [slot_draws["expiry"]]
            return forward(*args, **kwargs)

        return call

    core_vq._sample_vectors, core_vq._run_kmeans = sample, kmeans
    for cb, slot_draws in zip(active, draws, strict=True):
        cb.forward = wrap(cb, slot_draws)
    try:
        yield
    finally:
        core_vq._sample_vectors, core_vq._run_kmeans = sample_vectors, run_kmeans
        for cb in active:
            del cb.forward


class _TiedCdist:
    """``torch`` for moshi's quantizer module, whose ``cdist`` ranks ties like the JAX side.

    moshi calls ``torch.cdist`` only to take an ``argmin`` of it (code assignment and k-means).
    This ``cdist`` returns 0 for every centroid within ``rtol * (|x|^2 + |e|^2)`` of the nearest
    squared distance (``e`` the nearest centroid) and 1 elsewhere, so that ``argmin`` takes the
    lowest index among them, as :func:`~amylm_jax.models.vq_kmeans.nearest_codes` does with
    ``tie_rtol=rtol``.
    """

    def __init__(self, rtol: float):
        self.rtol = rtol

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    def cdist(self, x: torch.Tensor, e: torch.Tensor, p: float = 2.0) -> torch.Tensor:
        if p != 2.0:
            raise NotImplementedError("only Euclidean distances")
        sq_x = (x * x).sum(-1)
        sq_e = (e * e).sum(-1)
        d2 = ((x[..., :, None, :] - e[..., None, :, :]) ** 2).sum(-1)
        nearest, best = d2.min(-1)
        scale = sq_x + sq_e.gather(-1, best)
        return (d2 > (nearest + self.rtol * scale)[..., None]).to(x.dtype)


@contextlib.contextmanager
def tie_rule(rtol: float):
    """Within the block, moshi's codebooks break ties between near-equal centroids as the JAX
    side does with ``quantizer.tie_rtol=rtol`` (0 leaves moshi's plain argmin)."""
    from moshi.quantization import core_vq

    if rtol:
        core_vq.torch = _TiedCdist(rtol)
    try:
        yield
    finally:
        core_vq.torch = torch


def _active_codebooks(model: nn.Module) -> list[nn.Module]:
    """The running codebooks of the split quantizer, in call order."""
    q = model.quantizer
    out = []
    for rvq in (q.rvq_first, q.rvq_rest):
        out += [layer._codebook for layer in rvq.vq.layers[: rvq.n_q]]
    return out


# ------------------------------------------------------------------------------ the trainer
class TorchTrainer(nn.Module):
    """Codec + heads + discriminator + both optimisers; :meth:`train_step` = docs/original.md §7.3.

    ``precision``: "fp32"; on CUDA also "tf32" (TF32 matmuls / convolutions) and "bf16"
    (autocast to bfloat16 for the forwards; STFT, msspec and losses in float32); "fp64" runs
    everything in float64 (the reference of the fidelity test: it shows which side's float32
    rounding a difference comes from).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        wavlm_dim: int,
        llm_dim: int,
        device: str = "cpu",
        precision: str = "fp32",
    ):
        super().__init__()
        _check_ref_optim(cfg)
        if precision not in ("fp32", "tf32", "bf16", "fp64"):
            raise ValueError(f"precision must be fp32, tf32, bf16 or fp64, got {precision!r}")
        if precision in ("tf32", "bf16") and not str(device).startswith("cuda"):
            raise ValueError(f"precision {precision!r} needs a CUDA device")
        self.cfg, self.device, self.precision = cfg, torch.device(device), precision
        if str(device).startswith("cuda"):
            tf32 = precision == "tf32"
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
        self.codec = build_torch_codec(cfg.codec, device)
        d_latent = cfg.codec.quantizer.output_dimension
        self.wavlm_proj = nn.Linear(d_latent, wavlm_dim)
        self.llm_proj = nn.Linear(d_latent, llm_dim)
        d = cfg.disc
        self.disc = TorchMSSTFTDiscriminator(d.filters, d.n_ffts, d.hop_lengths, d.win_lengths)
        self.dtype = torch.float64 if precision == "fp64" else torch.float32
        self.to(device=device, dtype=self.dtype)
        self.train()
        for name in cfg.frozen:
            for p in getattr(self.codec, name).parameters():
                p.requires_grad_(False)
        o = cfg.optim
        self.g_params = [p for p in self.codec.parameters() if p.requires_grad]
        self.g_params += list(self.wavlm_proj.parameters()) + list(self.llm_proj.parameters())
        self.d_params = list(self.disc.parameters())
        self.opt_g = torch.optim.Adam(self.g_params, lr=o.lr_g, betas=(o.b1, o.b2), eps=o.eps)
        self.opt_d = torch.optim.Adam(self.d_params, lr=o.lr_d, betas=(o.b1, o.b2), eps=o.eps)

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _full(self, t: torch.Tensor) -> torch.Tensor:
        """Back to the full precision (losses are computed there, as the JAX step does)."""
        return t.to(self.dtype)

    def _set_disc_grad(self, flag: bool) -> None:
        for p in self.d_params:
            p.requires_grad_(flag)

    def generator_forward(self, audio_B1N: torch.Tensor):
        """Training-mode codec forward: ``(fake [B,1,N] float32, rvq_first result)``."""
        m = self.codec
        n = audio_B1N.shape[-1]
        with self._autocast():
            emb = m._encode_to_unquantized_latent(audio_B1N)  # pads to a 1920 multiple
            sp = m.quantizer.rvq_first(emb, m.frame_rate)  # EMA on codebooks 0, 1
            ac = m.quantizer.rvq_rest(emb, m.frame_rate)  # EMA on codebooks 2..
            h = m._to_encoder_framerate(sp.x + ac.x)
            (h,) = m.decoder_transformer(h)
            fake = m.decoder(h)[..., :n]
        return fake.to(self.dtype), sp

    def train_step(
        self, audio_B1N: torch.Tensor, wavlm_BTD: torch.Tensor, llm_BTD: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """One generator + discriminator update in the original order; returns the 7 losses."""
        lc = self.cfg.loss
        audio_B1N, wavlm_BTD, llm_BTD = (
            t.to(device=self.device, dtype=self.dtype) for t in (audio_B1N, wavlm_BTD, llm_BTD)
        )
        fake, sp = self.generator_forward(audio_B1N)
        f = self._full

        # ---- generator update: the discriminator is read-only
        self._set_disc_grad(False)
        with self._autocast():
            logits_fake, fmaps_fake = self.disc(fake)
            with torch.no_grad():
                _, fmaps_real = self.disc(audio_B1N)
            adv = torch_generator_adv_loss([f(lg) for lg in logits_fake])
            feat = torch_feature_matching_loss(
                [[f(x) for x in fm] for fm in fmaps_fake],
                [[f(x) for x in fm] for fm in fmaps_real],
            )
            # LLM latent: codebook 0 decoded with the post-EMA centroids (docs/original.md §3.9).
            sem = self.codec.quantizer.rvq_first.decode(sp.codes[:, :1])
            pred_l = f(self.llm_proj(sem.transpose(1, 2)))
            pred_w = f(self.wavlm_proj(sp.x.transpose(1, 2)))
        llm = 1 - F.cosine_similarity(pred_l, llm_BTD, dim=-1, eps=1e-8).mean()
        wavlm = 1 - F.cosine_similarity(pred_w, wavlm_BTD, dim=-1, eps=1e-8).mean()
        ms = torch_msspec_loss(fake, audio_B1N) if not lc.adversarial_only else fake.new_zeros(())
        loss_g = lc.alpha_adv * adv + lc.alpha_feat * feat + lc.alpha_wavlm * wavlm
        loss_g = loss_g + lc.alpha_llm * llm
        if not lc.adversarial_only:
            loss_g = loss_g + lc.alpha_msspec * ms
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        if self.cfg.optim.clip_g > 0:
            torch.nn.utils.clip_grad_norm_(
                [p for p in self.g_params if p.grad is not None], self.cfg.optim.clip_g
            )
        self.opt_g.step()

        # ---- discriminator update: same batch, detached fake, two more forwards
        self._set_disc_grad(True)
        with self._autocast():
            logits_fake, _ = self.disc(fake.detach())
            logits_real, _ = self.disc(audio_B1N)
            loss_d = torch_discriminator_loss(
                [f(lg) for lg in logits_real], [f(lg) for lg in logits_fake]
            )
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        values = (loss_g, loss_d, adv, feat, wavlm, llm, ms)
        return {k: v.detach() for k, v in zip(LOSS_NAMES, values, strict=True)}


# ------------------------------------------------------------------------------ state transfer
def _np(tree: Any) -> Any:
    import jax

    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def trainer_state_from_jax(state: Any, cfg: TrainConfig) -> dict[str, np.ndarray]:
    """A JAX TrainState's parameters and codebook buffers as a :class:`TorchTrainer` state dict.

    Also holds ``<codebook prefix>countdown`` entries (the expiry countdowns, which moshi keeps
    as Python ints) that :func:`load_trainer_state` applies.
    """
    gen = _np(state.gen_params)
    codebooks = _np(state.codebooks)
    codec_sd = flax_to_torch({"params": gen["codec"], "codebooks": codebooks}, cfg.codec)
    out = {f"codec.{k}": v for k, v in codec_sd.items()}
    out.update(head_to_torch(gen["wavlm_head"], "linear", "wavlm_proj"))
    out.update(head_to_torch(gen["llm_head"], "linear", "llm_proj"))
    out.update({f"disc.{k}": v for k, v in disc_to_torch(_np(state.disc_params)).items()})
    for prefix, count in _countdowns(codebooks).items():
        out[f"codec.{prefix}countdown"] = np.asarray(count, np.int32)
    return out


def load_trainer_state(trainer: TorchTrainer, sd: dict[str, np.ndarray]) -> None:
    """Load :func:`trainer_state_from_jax` output; clears moshi's centroid caches.

    Optimizer states are not copied (use it on a fresh trainer, as the benchmarks do).
    """
    tensors = {
        k: torch.from_numpy(np.array(v, np.float32)).to(trainer.device, trainer.dtype)
        for k, v in sd.items()
        if not k.endswith("countdown")
    }
    trainer.load_state_dict(tensors, strict=True)
    for prefix, cb in _codebooks(trainer.codec).items():
        cb.register_buffer("_embedding", None, persistent=False)
        cb._cached_initialized = False
        cb._next_unused_check = int(sd[f"codec.{prefix}countdown"])


def load_jax_state(trainer: TorchTrainer, state: Any) -> None:
    """Copy a JAX TrainState (parameters, codebooks, countdowns) into ``trainer``."""
    load_trainer_state(trainer, trainer_state_from_jax(state, trainer.cfg))


def _countdowns(codebooks: dict) -> dict[str, int]:
    out = {}
    for rvq, slots in codebooks["quantizer"].items():
        for slot, leaves in slots.items():
            out[f"quantizer.{rvq}.vq.layers.{slot.split('_')[1]}._codebook."] = int(
                leaves["countdown"]
            )
    return out


def torch_to_jax(trainer: TorchTrainer) -> tuple[dict, dict, dict]:
    """``(gen_params, codebooks, disc_params)`` of the JAX layout from the PyTorch trainer."""
    codec_sd = {k: v.detach().float().cpu().numpy() for k, v in trainer.codec.state_dict().items()}
    variables, report = torch_to_flax(codec_sd, trainer.cfg.codec)
    if report.missing or report.unexpected:
        raise ValueError(f"codec state does not match the config: {report}")
    counts = {p: cb._next_unused_check for p, cb in _codebooks(trainer.codec).items()}
    for rvq, slots in variables["codebooks"]["quantizer"].items():
        for slot, leaves in slots.items():
            key = f"quantizer.{rvq}.vq.layers.{slot.split('_')[1]}._codebook."
            leaves["countdown"] = np.asarray(counts[key], np.int32)

    def head(mod: nn.Module, prefix: str) -> dict:
        sd = {f"{prefix}.{k}": v.detach().cpu().numpy() for k, v in mod.state_dict().items()}
        return head_from_torch(sd, "linear", prefix)

    gen = {
        "codec": variables["params"],
        "wavlm_head": head(trainer.wavlm_proj, "wavlm_proj"),
        "llm_head": head(trainer.llm_proj, "llm_proj"),
    }
    disc = disc_from_torch({k: v.detach().cpu() for k, v in trainer.disc.state_dict().items()})
    return gen, variables["codebooks"], disc


# ------------------------------------------------------------------------------ comparisons
def _adam_moments(opt_state: Any) -> tuple[Any, Any]:
    """Merge the ``mu``/``nu`` trees of every Adam inside an optax state (MaskedNodes -> None)."""
    import jax
    import optax

    adams = [
        s
        for s in jax.tree_util.tree_leaves(
            opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState)
        )
        if isinstance(s, optax.ScaleByAdamState)
    ]
    if not adams:
        raise ValueError("no Adam state found")

    def merge(*leaves):
        real = [x for x in leaves if not isinstance(x, optax.MaskedNode)]
        return real[0] if real else None

    def masked(x):
        return isinstance(x, optax.MaskedNode)

    mu = jax.tree_util.tree_map(merge, *[a.mu for a in adams], is_leaf=masked)
    nu = jax.tree_util.tree_map(merge, *[a.nu for a in adams], is_leaf=masked)
    return mu, nu


def _gen_torch_layout(gen: dict, codebooks: dict, cfg: TrainConfig, fill: dict | None) -> dict:
    """Generator tree -> ``{torch key: array}``; ``None`` leaves (no moment) become zeros."""
    import jax

    if fill is not None:
        gen = jax.tree_util.tree_map(
            lambda m, p: np.zeros_like(p) if m is None else m,
            gen,
            fill,
            is_leaf=lambda x: x is None,
        )
    sd = flax_to_torch({"params": gen["codec"], "codebooks": codebooks}, cfg.codec)
    out = {f"codec.{k}": v for k, v in sd.items() if "._codebook." not in k}
    out.update(head_to_torch(gen["wavlm_head"], "linear", "wavlm_proj"))
    out.update(head_to_torch(gen["llm_head"], "linear", "llm_proj"))
    return out


def _codebook_layout(codebooks: dict, cfg: TrainConfig, gen_codec: dict) -> dict:
    sd = flax_to_torch({"params": gen_codec, "codebooks": codebooks}, cfg.codec)
    return {f"codec.{k}": v for k, v in sd.items() if "._codebook." in k}


def jax_torch_layout(state: Any, cfg: TrainConfig) -> dict[str, dict[str, np.ndarray]]:
    """A JAX TrainState as PyTorch-layout numpy dicts.

    Keys: ``gen`` / ``disc`` (parameters), ``codebooks`` (EMA buffers), ``gen_mu`` /
    ``gen_nu`` / ``disc_mu`` / ``disc_nu`` (Adam first / second moments; zeros for
    parameters without optimizer state, i.e. the frozen encoder side), ``countdowns`` (steps
    to each codebook's next dead-code check, by state-dict prefix).
    """
    gen, codebooks, disc = _np(state.gen_params), _np(state.codebooks), _np(state.disc_params)
    g_mu, g_nu = (_np(t) for t in _adam_moments(state.opt_g))
    d_mu, d_nu = (_np(t) for t in _adam_moments(state.opt_d))
    return {
        "gen": _gen_torch_layout(gen, codebooks, cfg, None),
        "codebooks": _codebook_layout(codebooks, cfg, gen["codec"]),
        "disc": {f"disc.{k}": v for k, v in disc_to_torch(disc).items()},
        "gen_mu": _gen_torch_layout(g_mu, codebooks, cfg, gen),
        "gen_nu": _gen_torch_layout(g_nu, codebooks, cfg, gen),
        "disc_mu": {f"disc.{k}": v for k, v in disc_to_torch(d_mu).items()},
        "disc_nu": {f"disc.{k}": v for k, v in disc_to_torch(d_nu).items()},
        "countdowns": _countdowns(codebooks),
    }


def torch_layout(trainer: TorchTrainer) -> dict[str, dict[str, np.ndarray]]:
    """The same dicts as :func:`jax_torch_layout`, read from the PyTorch trainer."""

    def value(t: torch.Tensor) -> np.ndarray:
        return t.detach().float().cpu().numpy().copy()

    gen_names = ["codec", "wavlm_proj", "llm_proj"]
    named = {n: p for n, p in trainer.named_parameters() if n.split(".")[0] in gen_names}
    out: dict[str, dict[str, np.ndarray]] = {
        "gen": {n: value(p) for n, p in named.items()},
        "codebooks": {
            f"codec.{k}": value(v)
            for k, v in trainer.codec.state_dict().items()
            if "._codebook." in k
        },
        "countdowns": {
            p: int(cb._next_unused_check) for p, cb in _codebooks(trainer.codec).items()
        },
        "disc": {n: value(p) for n, p in trainer.disc.named_parameters(prefix="disc")},
    }
    for group, opt, params in (
        ("gen", trainer.opt_g, named),
        ("disc", trainer.opt_d, dict(trainer.disc.named_parameters(prefix="disc"))),
    ):
        for moment, key in (("mu", "exp_avg"), ("nu", "exp_avg_sq")):
            out[f"{group}_{moment}"] = {
                n: value(opt.state[p][key]) if p in opt.state else np.zeros(tuple(p.shape))
                for n, p in params.items()
            }
    return out
