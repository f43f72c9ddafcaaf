"""The metric guide (docs/metrics.md) as data: status bands, diagnoses and the live epoch check.

The quick-reference table of the metric guide (the public contract for the
``train/<name>_epoch`` metrics) is encoded once, in :data:`RULES`, so the report, the plots and
the trainer's live check all read the same thresholds.

Boundary convention (the table's inequalities taken literally): ``< a`` and ``> b`` are open,
``a - b`` ranges are closed. A value that lies in two closed ranges (a shared endpoint such as
``adv_g = 0.5`` or ``loss_d = 1.5``) takes the *less severe* status. So ``llm = 0.1`` is a
warning (``good`` is ``< 0.1``), ``llm = 0.3`` is a warning (``critical`` is ``> 0.3``),
``adv_g = 0.5`` and ``loss_d = 2.0`` are good. Two cases the table leaves open are decided
here: ``adv_g < 0.1`` is a warning ("discriminator may be weak", from the metric guide's
adv_g notes) and ``loss_g < 1.0`` is good (every weighted term is small). A non-finite value
is critical.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from amylm_jax.config import default_loss_weights

GOOD, WARNING, CRITICAL = "good", "warning", "critical"
SEVERITY = {GOOD: 0, WARNING: 1, CRITICAL: 2}
INF = math.inf
FLAT_TOLERANCE = 0.02  # relative change over the trend window below which a trend is flat
# REF loss weights: loss_g = 1 adv_g + 4 feat + 15 msspec + 1 wavlm + 1 llm.
DEFAULT_ALPHAS = default_loss_weights()


@dataclasses.dataclass(frozen=True)
class Band:
    """One status interval of a metric, with the table's open/closed ends."""

    status: str
    lo: float
    hi: float
    lo_closed: bool = True
    hi_closed: bool = True
    note: str = ""

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the band, honouring open and closed ends."""
        above_lo = value >= self.lo if self.lo_closed else value > self.lo
        below_hi = value <= self.hi if self.hi_closed else value < self.hi
        return above_lo and below_hi

    @property
    def label(self) -> str:
        """The band as the metric guide writes it (``< 0.1``, ``0.1 - 0.3``, ``> 0.3``)."""
        if self.lo == -INF:
            return f"< {_num(self.hi)}"
        if self.hi == INF:
            return f"> {_num(self.lo)}"
        return f"{_num(self.lo)} - {_num(self.hi)}"


def _num(x: float) -> str:
    return f"{x:.1f}" if x == int(x) else f"{x:g}"


def _below(x: float, status: str, note: str = "") -> Band:
    return Band(status, -INF, x, lo_closed=False, hi_closed=False, note=note)


def _between(a: float, b: float, status: str, note: str = "") -> Band:
    return Band(status, a, b, note=note)


def _above(x: float, status: str, note: str = "") -> Band:
    return Band(status, x, INF, lo_closed=False, hi_closed=False, note=note)


@dataclasses.dataclass(frozen=True)
class MetricRule:
    """Bands and meaning of one quick-reference metric.

    ``target`` is the value the trend treats as ideal: the trend is "improving" when the
    distance to it shrinks (0 for plain losses, 1.75 for ``loss_d`` whose stable hinge value is
    1.7-1.8, 0.1 for ``adv_g`` which should decrease but not below 0.1).
    """

    bands: tuple[Band, ...]
    measures: str
    similarity: bool = False
    target: float = 0.0


RULES: dict[str, MetricRule] = {
    "llm_epoch": MetricRule(
        (_below(0.1, GOOD), _between(0.1, 0.3, WARNING), _above(0.3, CRITICAL)),
        "semantic alignment of codebook 0 with the Qwen LLM (1 - cosine similarity)",
        similarity=True,
    ),
    "wavlm_epoch": MetricRule(
        (_below(0.2, GOOD), _between(0.2, 0.5, WARNING), _above(0.5, CRITICAL)),
        "semantic+prosody alignment of codebooks 0+1 with WavLM (1 - cosine similarity)",
        similarity=True,
    ),
    "msspec_epoch": MetricRule(
        (_below(0.1, GOOD), _between(0.1, 0.5, WARNING), _above(0.5, CRITICAL)),
        "multi-scale spectrogram reconstruction quality",
    ),
    "feat_epoch": MetricRule(
        (_below(0.05, GOOD), _between(0.05, 0.2, WARNING), _above(0.2, CRITICAL)),
        "feature matching between real and fake in the discriminator",
    ),
    "adv_g_epoch": MetricRule(
        (
            _between(0.1, 0.5, GOOD),
            _between(0.5, 1.0, WARNING),
            _below(0.1, WARNING, "discriminator may be weak"),
            _above(1.0, CRITICAL),
        ),
        "generator's ability to fool the discriminator",
        target=0.1,
    ),
    "loss_d_epoch": MetricRule(
        (
            _between(1.5, 2.0, GOOD),
            _between(0.5, 1.5, WARNING),
            _between(2.0, 3.0, WARNING),
            _below(0.5, CRITICAL),
            _above(3.0, CRITICAL),
        ),
        "discriminator's ability to distinguish real from fake",
        target=1.75,
    ),
    "loss_g_epoch": MetricRule(
        (
            _between(1.0, 3.0, GOOD),
            _below(1.0, GOOD, "below the table's good range 1.0 - 3.0: every term is small"),
            _between(3.0, 5.0, WARNING),
            _above(5.0, CRITICAL),
        ),
        "total generator loss (weighted sum)",
    ),
}


def canonical_name(name: str) -> str:
    """Map ``train/llm_epoch``, ``llm_epoch``, ``llm_step`` or ``llm`` to ``llm_epoch``."""
    base = name.removeprefix("train/")
    for suffix in ("_epoch", "_step"):
        base = base.removesuffix(suffix)
    return f"{base}_epoch"


def match_band(name: str, value: float) -> Band | None:
    """The least severe band of metric ``name`` containing ``value`` (None if non-finite)."""
    key = canonical_name(name)
    if key not in RULES:
        raise KeyError(f"{name!r} is not a metric of the metric guide table: {sorted(RULES)}")
    if not math.isfinite(value):
        return None
    hits = [band for band in RULES[key].bands if band.contains(value)]
    return min(hits, key=lambda band: SEVERITY[band.status]) if hits else None


def classify(name: str, value: float) -> str:
    """Status ``good`` / ``warning`` / ``critical`` of one metric-guide metric value.

    ``name`` may carry the ``train/`` prefix and a ``_step``/``_epoch`` suffix; a step value is
    judged by the epoch thresholds. Raises ``KeyError`` for a metric outside the table.
    """
    band = match_band(name, float(value))
    return band.status if band is not None else CRITICAL


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """One issue found in a run, with the metric guide's cause and config-level fixes."""

    metric: str
    severity: str
    issue: str
    cause: str
    fixes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (fixes as a list)."""
        out = dataclasses.asdict(self)
        out["fixes"] = list(self.fixes)
        return out


_D_STRONG_FIXES = (
    "reduce discriminator capacity: --config.disc.filters=16",
    "or increase the adversarial weight: --config.loss.alpha_adv=1.5",
)
_D_WEAK_FIXES = (
    "increase discriminator capacity: --config.disc.filters=64",
    "or raise its learning rate: --config.optim.lr_d=6e-4",
)
_LLM_FIXES = (
    "increase the LLM distillation weight: --config.loss.alpha_llm=2.0",
    "or reduce the adversarial weight: --config.loss.alpha_adv=0.5",
)
_WAVLM_FIXES = (
    "use an MLP projection (Linear->ReLU->Linear) instead of linear: --config.heads.wavlm=mlp",
    "increase the WavLM weight (2.0-5.0): --config.loss.alpha_wavlm=3.0",
    "keep reconstruction guidance on: --config.loss.adversarial_only=False",
)
_MSSPEC_FIXES = (
    "keep reconstruction on during adaptation: --config.loss.adversarial_only=False",
    "keep the reconstruction weight high: --config.loss.alpha_msspec=15.0",
)
_FEAT_FIXES = (
    "ensure the discriminator feature maps are extracted properly (every sub-discriminator, "
    "same layers for real and fake, real features without gradient)",
    "only then consider a larger weight: --config.loss.alpha_feat",
)


def metric_diagnosis(name: str, value: float, status: str, phase: str) -> Diagnosis | None:
    """metric-guide diagnosis for one metric that is not ``good`` (None when it is)."""
    if status == GOOD:
        return None
    key = canonical_name(name)
    band = match_band(key, value)
    where = f"{key} = {value:.4g} ({band.label if band else 'not finite'})"
    if key == "wavlm_epoch":
        return Diagnosis(
            key,
            status,
            f"High WavLM loss: {where}",
            "semantic+prosody alignment of codebooks 0+1 with WavLM is failing; a linear "
            "projection is often insufficient for WavLM features",
            _WAVLM_FIXES,
        )
    if key == "llm_epoch":
        return Diagnosis(
            key,
            status,
            f"High LLM loss: {where}",
            "semantic content is not captured by codebook 0",
            _LLM_FIXES,
        )
    if key == "msspec_epoch":
        cause = "reconstruction is not converging"
        if phase == "adaptation":
            cause += " (adaptation phase: it should decrease steadily)"
        return Diagnosis(key, status, f"High reconstruction loss: {where}", cause, _MSSPEC_FIXES)
    if key == "feat_epoch":
        return Diagnosis(
            key,
            status,
            f"Feature matching high: {where}",
            "poor internal representation alignment between real and fake",
            _FEAT_FIXES,
        )
    if key == "loss_d_epoch":
        if value < 1.5:
            return Diagnosis(
                key,
                status,
                f"Discriminator too strong: {where}",
                "discriminator overpowering the generator",
                _D_STRONG_FIXES,
            )
        return Diagnosis(
            key,
            status,
            f"Discriminator too weak: {where}",
            "generator fooling the discriminator too easily",
            _D_WEAK_FIXES,
        )
    if key == "adv_g_epoch":
        if value < 0.1:
            return Diagnosis(
                key,
                status,
                f"Generator adversarial loss low: {where}",
                "discriminator may be weak",
                _D_WEAK_FIXES,
            )
        return Diagnosis(
            key,
            status,
            f"Generator adversarial loss high: {where}",
            "possible training instability: the discriminator rejects the generator's output",
            _D_STRONG_FIXES,
        )
    if key == "loss_g_epoch":
        return Diagnosis(
            key,
            status,
            f"Total generator loss high: {where}",
            "a weighted term dominates the total; see that term's diagnosis",
            (),
        )
    return None


def trend_diagnosis(name: str, direction: str) -> Diagnosis | None:
    """Diagnosis driven by a trend rather than a value (the metric guide's 'LLM loss
    increasing')."""
    if canonical_name(name) == "llm_epoch" and direction == "worsening":
        return Diagnosis(
            "llm_epoch",
            WARNING,
            "LLM loss increasing over the last epochs",
            "semantic content degradation",
            _LLM_FIXES,
        )
    return None


def discriminator_balance(name: str, accuracy: float) -> Diagnosis | None:
    """Monitoring tip: real and fake discriminator accuracy should both be about 50-70 %.

    Accepts a fraction (the ``train/d_real_acc``) or, above 1, a percentage.
    """
    frac = accuracy / 100.0 if accuracy > 1.0 else accuracy
    if 0.5 <= frac <= 0.7:
        return None
    side = "strong" if frac > 0.7 else "weak"
    return Diagnosis(
        canonical_name(name),
        WARNING,
        f"Discriminator balance: {canonical_name(name)} = {frac:.0%} (expected ~50-70%)",
        f"the discriminator looks too {side}",
        _D_STRONG_FIXES if side == "strong" else _D_WEAK_FIXES,
    )


def trend_of(values: Sequence[float], target: float = 0.0, window: int = 5) -> str:
    """``improving`` / ``worsening`` / ``flat`` from the last epoch values (``n/a`` below two).

    Fits a least-squares line to the distance ``|value - target|`` over the last ``window``
    values, so a metric with a target band (loss_d) improves when it moves towards it. The
    change the line implies across the window is flat below ``FLAT_TOLERANCE`` of the level.
    """
    vals = [v for v in values[-window:] if math.isfinite(v)]
    if len(vals) < 2:
        return "n/a"
    dist = [abs(v - target) for v in vals]
    n = len(dist)
    x_mean, y_mean = (n - 1) / 2.0, sum(dist) / n
    slope = sum((i - x_mean) * (d - y_mean) for i, d in enumerate(dist))
    slope /= sum((i - x_mean) ** 2 for i in range(n))
    change = slope * (n - 1)
    level = max(sum(abs(v) for v in vals) / n, 1e-6)
    if abs(change) <= FLAT_TOLERANCE * level:
        return "flat"
    return "improving" if change < 0 else "worsening"


def loss_g_cause(values: Mapping[str, float | None], alphas: Mapping[str, float]) -> str:
    """Why loss_g is high: its two largest weighted terms (``values`` keyed ``adv_g``, ...)."""
    weights = {"adv_g": "adv", "feat": "feat", "msspec": "msspec", "wavlm": "wavlm", "llm": "llm"}
    terms = []
    for name, alpha_key in weights.items():
        value, alpha = values.get(name), alphas[alpha_key]
        if value is not None and math.isfinite(value):
            terms.append((alpha * value, f"{alpha:g}*{name}={alpha * value:.3g}"))
    largest = ", ".join(text for _, text in sorted(terms, reverse=True)[:2])
    return f"largest weighted terms: {largest}; see their diagnoses" if largest else "n/a"


AUDIO_TIP = Diagnosis(
    "msspec_epoch",
    "info",
    "Reconstruction loss disabled: monitor audio",
    "msspec no longer measures reconstruction; regular audio logging is essential",
    ("listen to the logged validation audio every epoch",),
)


def check_epoch(epoch_metrics: Mapping[str, float]) -> list[str]:
    """Warning lines for every metric-guide epoch metric in ``critical``, for the trainer's log.

    Keys may carry the ``train/`` prefix; keys outside the quick-reference table (learning
    rates, codebook entropy, ...) are ignored. Each line names the value, the band and the
    config keys of the metric guide's fix.
    """
    lines = []
    for name, raw in epoch_metrics.items():
        if not name.removeprefix("train/").endswith("_epoch") or canonical_name(name) not in RULES:
            continue
        value = float(raw)
        if not math.isfinite(value):
            lines.append(f"CRITICAL {canonical_name(name)} = {value} is not finite")
            continue
        if classify(name, value) != CRITICAL:
            continue
        diag = metric_diagnosis(name, value, CRITICAL, phase="unknown")
        if diag is None:
            continue
        fixes = "; ".join(diag.fixes)
        lines.append(f"CRITICAL {diag.issue} - {diag.cause}" + (f"; try: {fixes}" if fixes else ""))
    return lines
