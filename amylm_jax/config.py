"""Typed, frozen configuration for the Amy codec and its training.

Library code only ever sees these dataclasses. ``ml_collections.ConfigDict`` objects (the
``configs/*.py`` files and ``--config.x=y`` overrides) stop at the entry points, which convert
them with :func:`from_dict`. Every default reproduces the original system (docs/original.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any, TypeVar

from amylm_jax import paths

# What "auto" means per JAX backend (None = any other backend); benchmarks/formulations.py.
#: The seven training losses users read (``train/<name>_step`` / ``_epoch``), in their order.
LOSS_NAMES = ("loss_g", "loss_d", "adv_g", "feat", "wavlm", "llm", "msspec")
#: The codec parts frozen by default: the pretrained SEANet encoder and encoder transformer.
FROZEN_ENCODER = ("encoder", "encoder_transformer")

_AUTO_TRANSPOSE = {"tpu": "dilated", None: "polyphase"}
_AUTO_DISC_CONV = {"cpu": "s2d", "tpu": "s2d_full", None: "lax"}


def _resolve_auto(value: str, choices: dict[str | None, str], platform: str | None) -> str:
    """``value`` itself unless it is ``"auto"``; then the choice for ``platform``."""
    if value != "auto":
        return value
    if platform is None:
        import jax  # only to resolve "auto": configs stay importable without JAX

        platform = jax.default_backend()
    return choices.get(platform, choices[None])


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the data come from and how it is cut (library side of the data config).

    `batch_size` is GLOBAL: each of `process_count` processes gets `batch_size // process_count`
    examples per step. `val_clips` (explicit clip ids) overrides `val_fraction`.
    `val_group_by` names a grouping field the store lists per clip (``speaker``, ``source``):
    the split then takes whole groups, so no speaker or recording is on both sides.
    """

    store: str = "demo"
    batch_size: int = 16
    segment_seconds: float = 1.0
    frame_aligned_crops: bool = True
    val_fraction: float = 0.2
    val_clips: tuple[str, ...] = ()
    val_group_by: str = ""
    split_seed: int = 42
    # Distillation targets standardised per dimension with the store's feature statistics
    # (mean and std over every frame of the store), per teacher.
    normalize_wavlm_targets: bool = False
    normalize_llm_targets: bool = False
    seed: int = 42
    worker_count: int = 0
    shuffle: bool = True


@dataclasses.dataclass(frozen=True)
class SEANetConfig:
    """SEANet encoder/decoder (docs/original.md §2.3-2.4). ``ratios`` are in decoder order."""

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
    """Causal pre-norm transformer with interleaved RoPE (docs/original.md §2.5)."""

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
    """Split residual VQ with EMA codebooks (docs/original.md §3).

    ``n_q`` codebook slots in total: ``n_q_first`` in ``rvq_first`` (semantic + prosody as its
    residual) and ``n_q - n_q_first`` in ``rvq_rest``, of which ``num_codebooks - n_q_first``
    are active. ``frozen_codebooks`` lists global codebook indices whose EMA/k-means/expiry
    updates are switched off (they still quantise).

    ``prosody_topology``: "residual" (default) quantises codebook 1 (prosody) on the residual
    of codebook 0 inside ``rvq_first``; "parallel" gives it its own one-codebook quantizer
    ``rvq_prosody`` (own input/output projections) on the same latent as codebook 0, the Amy
    design before prosody became a residual: ``x_sp`` is then the sum of the two outputs.

    ``tie_rtol``: 0 (default) picks each vector's code by a plain argmin of the distances, as
    the original. Above 0, every centroid within ``tie_rtol * (|x|^2 + |e|^2)`` of the nearest
    squared distance (``e`` the nearest centroid) counts as tied and the lowest index wins
    (``vq_kmeans.nearest_codes``): codes then no longer depend on a backend's rounding among
    centroids that are equal in exact arithmetic (see there), at the price of merging distinct
    centroids that close.
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
    prosody_topology: str = "residual"
    tie_rtol: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.tie_rtol < 1.0:
            raise ValueError(f"quantizer.tie_rtol must lie in [0, 1), got {self.tie_rtol}")
        if not self.n_q_first <= self.num_codebooks <= self.n_q:
            raise ValueError(
                f"num_codebooks={self.num_codebooks} must lie in "
                f"[{self.n_q_first}, {self.n_q}] (n_q_first..n_q)"
            )
        if self.prosody_topology not in ("residual", "parallel"):
            raise ValueError(
                f"quantizer.prosody_topology must be 'residual' or 'parallel', got "
                f"{self.prosody_topology!r}"
            )
        if self.prosody_topology == "parallel" and self.n_q_first != 2:
            raise ValueError(
                "quantizer.prosody_topology='parallel' needs n_q_first=2 (semantic, prosody), "
                f"got {self.n_q_first}"
            )

    def sub_quantizers(self) -> tuple[tuple[str, int, int, int], ...]:
        """``(name, slots, first global codebook, active slots)`` of each sub-quantizer, in
        codebook order: ``rvq_first`` [+ ``rvq_prosody``] + ``rvq_rest``."""
        rest = ("rvq_rest", self.n_q_rest, self.n_q_first, self.active_rest)
        if self.prosody_topology == "parallel":
            return (("rvq_first", 1, 0, 1), ("rvq_prosody", 1, 1, 1), rest)
        return (("rvq_first", self.n_q_first, 0, self.n_q_first), rest)

    @property
    def n_q_rest(self) -> int:
        return self.n_q - self.n_q_first

    @property
    def active_rest(self) -> int:
        return self.num_codebooks - self.n_q_first


@dataclasses.dataclass(frozen=True)
class CodecConfig:
    """The whole Mimi/Amy generator (docs/original.md §2)."""

    sample_rate: int = 24000
    frame_rate: float = 12.5
    seanet: SEANetConfig = SEANetConfig()
    transformer: TransformerConfig = TransformerConfig()
    quantizer: QuantizerConfig = QuantizerConfig()
    # Kyutai's released model uses a depthwise upsampling transposed conv (docs/original.md §2.6).
    upsample_depthwise: bool = True
    # Transposed-conv formulation: "auto" = "polyphase" on CPU/GPU (a plain conv + reshape:
    # 7x faster codec backward on CPU, benchmarks/RESULTS.md; XLA's input-dilated conv is known
    # to be slow on GPU) and "dilated" on TPU. Both compute the same model.
    transpose_method: str = "auto"

    def __post_init__(self):
        if self.transpose_method not in ("auto", "dilated", "polyphase"):
            raise ValueError("codec.transpose_method must be 'auto', 'dilated' or 'polyphase'")

    def resolved_transpose_method(self, platform: str | None = None) -> str:
        """The formulation for ``platform`` (default: JAX's default backend)."""
        return _resolve_auto(self.transpose_method, _AUTO_TRANSPOSE, platform)

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


HEAD_KINDS = ("linear", "mlp", "mlp_v2", "conv")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Generator loss weights and the distillation knobs (docs/original.md §6.5, §10).

    Defaults are REF: ``loss_g = 1 adv + 4 feat + 1 wavlm + 1 llm + 15 msspec``.
    ``adversarial_only`` switches off only msspec (logged as 0). With ``alpha_adv`` and
    ``alpha_feat`` both 0 the discriminator is not run or stepped at all (``loss_d`` logs 0).
    """

    alpha_adv: float = 1.0
    alpha_feat: float = 4.0
    alpha_msspec: float = 15.0
    alpha_wavlm: float = 1.0
    alpha_llm: float = 1.0
    adversarial_only: bool = False
    # LLM latent: "codebook0" = rvq_first.decode(code 0) with post-update centroids (REF, D2);
    # "ste" = rvq_first output restricted to codebook 0 with the straight-through estimator.
    llm_latent: str = "codebook0"
    # Isolation A (§10.3): LLM loss trains only llm_proj.
    llm_detach_latent: bool = False
    # §10.2: WavLM branch sees x_sp - sem + stop_gradient(sem) (sem = codebook-0 STE latent).
    wavlm_semantic_detach: bool = False
    # §10.2: parameter-free LayerNorm on the latent before each projection and on each target.
    layernorm: bool = False
    # §10.3: centre the WavLM target (and optionally the prediction) per clip over time.
    center_wavlm_target: bool = False
    center_wavlm_pred: bool = False
    # D19: REF averages over zero-padded frames too; True masks them out.
    mask_padded_frames: bool = False

    def __post_init__(self):
        if self.llm_latent not in ("codebook0", "ste"):
            raise ValueError(
                f"loss.llm_latent must be 'codebook0' or 'ste', got {self.llm_latent!r}"
            )

    @property
    def gan(self) -> bool:
        """Whether the discriminator takes part (either adversarial weight non-zero)."""
        return self.alpha_adv != 0.0 or self.alpha_feat != 0.0


@dataclasses.dataclass(frozen=True)
class BalancerConfig:
    """The loss balancer (``amylm_jax.losses.balancer``): off by default (the original sums the
    weighted losses). On, the loss weights become fractions of the gradient: the audio losses'
    (adv_g, feat, msspec) of ``total_norm`` at the decoded audio, the distillation losses'
    (wavlm, llm) of ``distill_total_norm`` at their latents. Needs ``shared_disc_forward``."""

    enabled: bool = False
    total_norm: float = 1.0
    distill_total_norm: float = 1.0
    ema_decay: float = 0.999
    epsilon: float = 1e-12

    def __post_init__(self):
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"balancer.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.total_norm <= 0 or self.distill_total_norm <= 0:
            raise ValueError("balancer.total_norm and distill_total_norm must be > 0")


@dataclasses.dataclass(frozen=True)
class HeadsConfig:
    """Distillation projections (docs/original.md §6.4, §10): "linear" (REF), "mlp", "mlp_v2",
    "conv"."""

    wavlm: str = "linear"
    llm: str = "linear"
    # None: the feature store's LLM dim. <= 0: no LLM branch at all (no head, no loss, no
    # `train/llm`), and a store without LLM features (`prepare --llm=none`) is accepted.
    llm_dim: int | None = None

    def __post_init__(self):
        for name in ("wavlm", "llm"):
            if getattr(self, name) not in HEAD_KINDS:
                raise ValueError(f"heads.{name} must be one of {HEAD_KINDS}")


@dataclasses.dataclass(frozen=True)
class DiscConfig:
    """Multi-scale STFT discriminator (docs/original.md §5)."""

    filters: int = 32
    n_ffts: tuple[int, ...] = (1024, 2048, 512, 256, 128)
    hop_lengths: tuple[int, ...] = (256, 512, 128, 64, 32)
    win_lengths: tuple[int, ...] = (1024, 2048, 512, 256, 128)
    # Conv formulation: "auto" = "s2d" on CPU (space-to-depth for the frequency stride in the
    # input gradient: ~2x faster discriminator backward on XLA:CPU), "s2d_full" on TPU (the
    # space-to-depth form throughout: the TPU compiler's kernel gradient of the strided conv
    # pads a per-tap tensor of a few channels to 128 lanes; half the temp memory and a 1.7x
    # faster cost-model step for the demo) and "lax" (the strided conv) on GPU, not yet
    # measured there. All compute the same model (benchmarks/RESULTS.md).
    conv_method: str = "auto"

    def __post_init__(self):
        if self.conv_method not in ("auto", "lax", "s2d", "s2d_full"):
            raise ValueError("disc.conv_method must be 'auto', 'lax', 's2d' or 's2d_full'")

    def resolved_conv_method(self, platform: str | None = None) -> str:
        """The conv formulation for ``platform`` (default: JAX's default backend)."""
        return _resolve_auto(self.conv_method, _AUTO_DISC_CONV, platform)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimisers (docs/original.md §7.1, §10): Adam(3e-4, 0.5, 0.9) for G (clip 1.0) and D (no
    clip).

    ``lr_rvq`` / ``lr_heads`` (None = ``lr_g``) give the quantizer projections and the
    distillation heads their own learning rate; ``rvq_warmup_steps`` warms ``lr_rvq`` up
    linearly, ``(step + 1) / warmup``. ``heads_b1``/``heads_b2`` (None = G's betas) give the
    heads the "regression" betas of §10.2. ``clip_d = 0`` means no clipping (REF).
    """

    optimizer: str = "adam"
    lr_g: float = 3e-4
    lr_d: float = 3e-4
    b1: float = 0.5
    b2: float = 0.9
    eps: float = 1e-8
    weight_decay: float = 0.0
    weight_decay_on: str = "all"
    weight_decay_groups: tuple[str, ...] = ("main", "rvq", "heads", "disc")
    clip_g: float = 1.0
    clip_d: float = 0.0
    lr_rvq: float | None = None
    rvq_warmup_steps: int = 0
    lr_heads: float | None = None
    heads_b1: float | None = None
    heads_b2: float | None = None
    # Learning-rate schedule of every group (generator, quantizer, heads, discriminator), after
    # a linear warm-up of ``warmup_steps`` ((step + 1) / warmup, like the quantizer's):
    # "constant" (the original), "cosine" (to ``final_lr_ratio`` x the rate over
    # ``decay_steps``, then flat) or "exponential" (x ``decay_rate`` every ``decay_steps``, as
    # DAC trains). See docs/recipes.md.
    schedule: str = "constant"
    warmup_steps: int = 0
    decay_steps: int = 0
    decay_rate: float = 1.0
    final_lr_ratio: float = 0.0
    # Exponential moving average of the generator's weights (codec + heads), updated after
    # every step: ema <- ema_decay * ema + (1 - ema_decay) * params. 0 = none (the original);
    # Mimi and EnCodec keep one with 0.99. ``ema_eval`` validates with the averaged weights.
    ema_decay: float = 0.0
    ema_eval: bool = True

    def __post_init__(self):
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"optim.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optim.optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("constant", "cosine", "exponential"):
            raise ValueError(
                f"optim.schedule must be 'constant', 'cosine' or 'exponential', "
                f"got {self.schedule!r}"
            )
        if self.schedule != "constant" and self.decay_steps <= 0:
            raise ValueError(f"optim.schedule={self.schedule!r} needs optim.decay_steps > 0")
        if self.warmup_steps < 0 or not 0.0 <= self.final_lr_ratio <= 1.0:
            raise ValueError("optim.warmup_steps must be >= 0 and final_lr_ratio in [0, 1]")
        if self.decay_rate <= 0:
            raise ValueError(f"optim.decay_rate must be > 0, got {self.decay_rate}")
        if self.weight_decay_on not in ("all", "transformers"):
            raise ValueError(
                f"optim.weight_decay_on must be 'all' or 'transformers', got "
                f"{self.weight_decay_on!r}"
            )
        unknown = set(self.weight_decay_groups) - {"main", "rvq", "heads", "disc"}
        if unknown:
            raise ValueError(
                f"optim.weight_decay_groups: unknown groups {sorted(unknown)} "
                "(choose from main, rvq, heads, disc)"
            )


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


def _tuplify(value: Any) -> Any:
    """Lists (from ConfigDicts / JSON) to tuples, recursively, so configs stay hashable."""
    if isinstance(value, (list, tuple)):
        return tuple(_tuplify(v) for v in value)
    return value


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
        elif isinstance(value, (list, tuple)):
            value = _tuplify(value)
        kwargs[name] = value
    return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class InitConfig:
    """Where the generator starts.

    ``mimi_weights``: a Kyutai/Amy PyTorch weights file, or None for random init.
    ``checkpoint``: a phase-1 workdir to start from (its latest checkpoint); then
    ``carry_optimizer`` keeps its optimizer states (else fresh ones) — the step counter always
    restarts at 0 in the new workdir.
    """

    mimi_weights: str | None = None
    checkpoint: str | None = None
    checkpoint_step: int | None = None
    carry_optimizer: bool = False


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """orbax checkpoints: every ``every_steps`` (and at the end), keep the last ``keep_last``
    plus the ``best_k`` best by ``monitor`` (an epoch metric, ``mode`` "min" or "max")."""

    every_steps: int = 1000
    keep_last: int = 2
    best_k: int = 3
    monitor: str = "train/msspec_epoch"
    mode: str = "min"
    async_save: bool = True


#: What a curriculum phase may change: the losses, the optimizers and what trains. The model,
#: data, budget, checkpoints and initialisation are the run's and stay the same in every phase.
PHASE_KEYS = ("loss.", "optim.", "balancer.", "frozen", "train_rest_codebooks",
              "quantizer_dropout", "quantizer_bypass", "grad_share_every_steps",
              "shared_disc_forward", "remat")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase of a curriculum: ``steps`` optimizer steps (0: to the end of the run; only
    the last phase) under the run's config with ``overrides`` (``(dotted key, value)`` pairs,
    keys under :data:`PHASE_KEYS`) applied."""

    name: str
    steps: int = 0
    overrides: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_any(cls, value: Any) -> Phase:
        """A Phase from itself or a mapping ``{"name", "steps", "overrides": {key: value}}``."""
        if isinstance(value, cls):
            return value
        if hasattr(value, "to_dict"):
            value = value.to_dict()
        if not isinstance(value, Mapping):
            raise ValueError(f"a phase must be a mapping with name/steps/overrides, got {value!r}")
        unknown = sorted(set(value) - {"name", "steps", "overrides"})
        if unknown:
            raise ValueError(f"phase {value.get('name')!r}: unknown field(s) {unknown}")
        overrides = value.get("overrides") or ()
        if hasattr(overrides, "to_dict"):
            overrides = overrides.to_dict()
        items = overrides.items() if isinstance(overrides, Mapping) else overrides
        pairs = tuple(sorted((str(k), _tuplify(v)) for k, v in items))
        return cls(str(value.get("name", "")), int(value.get("steps", 0)), pairs)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs (the library view of ``configs/*.py``).

    ``phases`` (empty: one phase, this config) makes the run a curriculum: phase ``k`` trains
    its ``steps`` steps under this config with its overrides, then the run moves on by itself
    (fresh optimizer states, every weight, codebook and the weight average carried); see
    :meth:`phase_plan`.
    """

    codec: CodecConfig = CodecConfig()
    data: DataConfig = DataConfig()
    loss: LossConfig = LossConfig()
    heads: HeadsConfig = HeadsConfig()
    balancer: BalancerConfig = BalancerConfig()
    disc: DiscConfig = DiscConfig()
    optim: OptimConfig = OptimConfig()
    init: InitConfig = InitConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    # Codec parts that get no gradient update (docs/original.md §2.9): top-level submodules
    # ("decoder") or paths below them ("quantizer/rvq_rest" freezes the acoustic quantizer's
    # projections while rvq_first trains).
    frozen: tuple[str, ...] = FROZEN_ENCODER
    # §10.3 "semantic_prosody_only": rvq_rest codebooks in eval mode (no EMA / expiry).
    train_rest_codebooks: bool = True
    # The gradient shares (train/grad_share/*) are measured every N steps and logged on those
    # steps (1 = every step): splitting the adversarial from the feature-matching gradient
    # costs one more discriminator backward (about 12 % of a full-size step on CPU).
    grad_share_every_steps: int = 10
    # Quantizer dropout: this fraction of the training examples is decoded from codebooks 0-1
    # plus a uniformly drawn number (0 .. all) of the acoustic codebooks (DAC, Mimi).
    quantizer_dropout: float = 0.0
    # Quantization bypass: this fraction of the training examples sends the unquantized latent
    # to the decoder (Mimi: 0.5). Validation always decodes every codebook.
    quantizer_bypass: float = 0.0
    seed: int = 42
    # Budget: max_steps > 0 stops after that many steps; else num_epochs epochs.
    max_steps: int = 0
    num_epochs: int = 100
    steps_per_epoch: int = 0  # 0 = from the data (training clips // global batch)
    eval_every_steps: int = 0  # 0 = at the end of every epoch
    eval_max_batches: int = 0  # 0 = the whole validation split
    num_eval_audio: int = 3
    # Periodic objective evaluation: every N steps (0 = never) the first `objective_eval_clips`
    # validation clips are encoded and decoded at full length and scored as `evaluate` scores
    # them (SI-SDR, mel and STFT distance, STOI/PESQ when installed, codebook usage and
    # entropy); the means go to the metric writers as `eval/<variant>/<metric>`.
    objective_eval_every_steps: int = 0
    objective_eval_clips: int = 4
    log_every_steps: int = 1
    precision: str = "fp32"  # "fp32" or "bf16" (compute dtype of convs/matmuls)
    remat: bool = False
    # One discriminator forward on fake and one on real shared by the G and D updates (same
    # numbers as the original's four forwards, ~19 % fewer FLOPs); False = the original order.
    shared_disc_forward: bool = True
    mesh: tuple[tuple[str, int], ...] = (("data", -1),)
    tensorboard: bool = True
    wandb_project: str | None = None
    phases: tuple[Phase, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "phases", tuple(Phase.from_any(p) for p in self.phases))
        names = [p.name for p in self.phases]
        if any(not n for n in names) or len(set(names)) != len(names):
            raise ValueError(f"phases need distinct, non-empty names, got {names}")
        for k, phase in enumerate(self.phases):
            if phase.steps < 0 or (phase.steps == 0 and k != len(self.phases) - 1):
                raise ValueError(
                    f"phase {phase.name!r}: steps must be > 0 (0, 'to the end of the run', "
                    "only for the last phase)"
                )
            for key, _ in phase.overrides:
                if not key.startswith(PHASE_KEYS):
                    raise ValueError(
                        f"phase {phase.name!r} overrides {key!r}; a phase may change only "
                        f"{', '.join(PHASE_KEYS)} (the model, data and budget are the run's)"
                    )
        if self.phases:
            for k in range(len(self.phases)):
                self.phase_config(k)  # every phase's config is valid
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.grad_share_every_steps < 1:
            raise ValueError(
                f"grad_share_every_steps must be >= 1, got {self.grad_share_every_steps}"
            )
        if self.balancer.enabled and not self.shared_disc_forward:
            raise ValueError("balancer.enabled needs shared_disc_forward=True")
        for name in ("quantizer_dropout", "quantizer_bypass"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def phase_config(self, index: int) -> TrainConfig:
        """The config phase ``index`` trains under (this config with its overrides, no
        phases); without phases, this config itself for index 0."""
        if not self.phases:
            if index != 0:
                raise IndexError(f"a run without phases has only phase 0, not {index}")
            return self
        return _phase_config(self, index)

    def phase_plan(self, total_steps: int) -> list[tuple[str, int, int]]:
        """``[(name, first step, last step)]`` over steps ``1..total_steps``: each phase its
        ``steps``, the last (``steps`` 0) to the end. A budget the phases do not fit is an
        error naming both."""
        if not self.phases:
            return [("train", 1, total_steps)]
        plan, first = [], 1
        for phase in self.phases:
            last = total_steps if phase.steps == 0 else first + phase.steps - 1
            plan.append((phase.name, first, last))
            first = last + 1
        need = sum(p.steps for p in self.phases)
        budgets = ", ".join(f"{p.name}: {p.steps}" for p in self.phases)
        if plan[-1][2] != total_steps or need > total_steps:
            raise ValueError(
                f"the phases take {need} steps ({budgets}) but the run has {total_steps} "
                "(max_steps, or num_epochs x steps per epoch); "
                "make them equal, or give the last phase steps=0 to fill the run"
            )
        return plan


def _phase_config(cfg: TrainConfig, index: int) -> TrainConfig:
    phase = cfg.phases[index]
    data = dataclasses.asdict(dataclasses.replace(cfg, phases=()))
    for key, value in phase.overrides:
        *parents, leaf = key.split(".")
        node = data
        for name in parents:
            if not isinstance(node.get(name), dict):
                raise ValueError(f"phase {phase.name!r}: no config section {key!r}")
            node = node[name]
        if leaf not in node:
            raise ValueError(f"phase {phase.name!r}: unknown config key {key!r}")
        node[leaf] = value
    try:
        return from_dict(TrainConfig, data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"phase {phase.name!r}: {err}") from err


def default_loss_weights() -> dict[str, float]:
    """The generator loss weights of the default config, by loss name (``adv``, ``feat``...)."""
    lc = LossConfig()
    return {n: getattr(lc, f"alpha_{n}") for n in ("adv", "feat", "msspec", "wavlm", "llm")}


# Config keys that moved; old run configs (checkpoints, exports) are migrated on load.
_MOVED_KEYS = {"transpose_method": ("codec", "transpose_method"),
               "disc_conv_method": ("disc", "conv_method")}  # fmt: skip


def migrate_train_config(data: dict[str, Any]) -> dict[str, Any]:
    """A run config as an older version wrote it -> today's layout (moved keys)."""
    data = dict(data)
    for old, (section, new) in _MOVED_KEYS.items():
        if old in data:
            value = data.pop(old)
            data[section] = {**dict(data.get(section) or {}), new: value}
    return data


def config_to_json(cfg: TrainConfig) -> dict[str, Any]:
    """A JSON-ready dict of a run config (what checkpoints and the metric log record)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_from_dict(data: Any) -> TrainConfig:
    """``ConfigDict``/dict -> TrainConfig, with the user-facing checks of required fields.

    ``init.mimi_weights`` / ``init.checkpoint`` may be local paths or URLs; ``none`` means
    unset. A weights file that does not exist is an error naming it.
    """
    data = data.to_dict() if hasattr(data, "to_dict") else dict(data)
    data = migrate_train_config(data)
    init = dict(data.get("init", {}))
    weights = init.get("mimi_weights")
    if weights == "":
        raise ValueError(
            "this config needs Kyutai's Mimi weights: pass "
            "--config.init.mimi_weights=PATH/TO/tokenizer-e351c8d8-checkpoint125.safetensors "
            "(a local file or URL; nothing is downloaded), or --config.init.mimi_weights=none to "
            "start from random weights"
        )
    for key in ("mimi_weights", "checkpoint"):
        if isinstance(init.get(key), str) and init[key].lower() == "none":
            init[key] = None
    data["init"] = init
    if init.get("mimi_weights") and not paths.as_path(init["mimi_weights"]).is_file():
        raise FileNotFoundError(
            f"--config.init.mimi_weights={init['mimi_weights']}: no such file (pass a "
            "safetensors/PyTorch file, local or URL, or none for random init)"
        )
    if data.get("data", {}).get("store", "demo") in ("", None):
        raise ValueError("pass the feature store: --config.data.store=PATH (or demo)")
    return from_dict(TrainConfig, data)
