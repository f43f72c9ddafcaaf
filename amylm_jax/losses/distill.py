"""Cosine distillation losses and their experiment knobs (docs/original.md §6.4, §8, §10, D19).

REF: ``loss = 1 - mean_{b,t} cos(pred[b, t], target[b, t])`` over *all* ``B x T`` frames,
zero-padded ones included (a zero target gives cosine 0, i.e. loss 1 for that frame; defect
D19 kept for parity). Knobs, all off by default: a frame mask (masked mean), per-clip
centering of target and/or prediction over time (§10.3), and a parameter-free LayerNorm of
both sides (§10.2). Everything is computed in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cosine_similarity(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
    """``torch.nn.functional.cosine_similarity(a, b, dim=-1, eps)`` with per-vector clamping.

    ``sum(a / max(||a||, eps) * b / max(||b||, eps))``: a zero vector gives 0 (not NaN). The
    norm is written as ``sqrt(max(||.||^2, eps^2))`` so its gradient is finite (zero) there.
    """
    a = a.astype(jnp.float32)
    b = b.astype(jnp.float32)
    na = jnp.sqrt(jnp.maximum(jnp.sum(a * a, axis=-1, keepdims=True), eps * eps))
    nb = jnp.sqrt(jnp.maximum(jnp.sum(b * b, axis=-1, keepdims=True), eps * eps))
    return jnp.sum((a / na) * (b / nb), axis=-1)


def layer_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Parameter-free LayerNorm over the last axis (``F.layer_norm`` without affine)."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


def _masked_mean(x: jax.Array, mask: jax.Array | None, axis: int) -> jax.Array:
    """Mean over ``axis`` counting only ``mask == 1`` entries (plain mean without a mask)."""
    if mask is None:
        return jnp.mean(x, axis=axis)
    mask = mask.astype(jnp.float32)
    if x.ndim > mask.ndim:
        mask = mask[..., None]
    return jnp.sum(x * mask, axis=axis) / jnp.maximum(jnp.sum(mask, axis=axis), 1.0)


def center_over_time(x_BxTxD: jax.Array, mask_BxT: jax.Array | None = None) -> jax.Array:
    """Subtract each clip's mean over time (only real frames count when a mask is given)."""
    x = x_BxTxD.astype(jnp.float32)
    return x - _masked_mean(x, mask_BxT, axis=1)[:, None, :]


def _common_length(*xs: jax.Array | None) -> int:
    return min(x.shape[1] for x in xs if x is not None)


def distill_loss(
    pred_BxTxD: jax.Array,
    target_BxTxD: jax.Array,
    *,
    mask_BxT: jax.Array | None = None,
    center_target: bool = False,
    center_pred: bool = False,
    layernorm: bool = False,
) -> jax.Array:
    """``1 - mean cos(pred, target)`` over frames (float32 scalar).

    * no mask (REF): plain mean over all ``B x T`` frames, padded ones included;
    * ``mask_BxT`` (1 = real frame): mean over real frames only;
    * ``layernorm``: parameter-free LayerNorm (eps 1e-5) over the last axis of both sides,
      applied first;
    * ``center_target`` / ``center_pred``: subtract the per-clip mean over time (masked).

    Prediction and target are truncated to their common length first (§10.2 length guard).
    """
    t = _common_length(pred_BxTxD, target_BxTxD, mask_BxT)
    pred = pred_BxTxD[:, :t].astype(jnp.float32)
    target = target_BxTxD[:, :t].astype(jnp.float32)
    mask = None if mask_BxT is None else mask_BxT[:, :t]
    if layernorm:
        pred, target = layer_norm(pred), layer_norm(target)
    if center_target:
        target = center_over_time(target, mask)
    if center_pred:
        pred = center_over_time(pred, mask)
    cos = cosine_similarity(pred, target)
    if mask is None:
        return 1.0 - jnp.mean(cos)
    return 1.0 - _masked_mean(cos, mask, axis=(0, 1))


def trivial_baseline(
    target_BxTxD: jax.Array, mean_vec_D: jax.Array, *, mask_BxT: jax.Array | None = None
) -> jax.Array:
    """Loss of the constant prediction ``mean_vec`` (docs/original.md §8 recommended baseline).

    ``1 - mean cos(mu, target)`` with ``mu`` the mean target vector over the training set: a
    distillation loss near this value means the head has learned little beyond a constant
    direction.
    """
    pred = jnp.broadcast_to(mean_vec_D.astype(jnp.float32), target_BxTxD.shape)
    return distill_loss(pred, target_BxTxD, mask_BxT=mask_BxT)
