"""Export a training run to PyTorch safetensors files, and import them back.

``python -m amylm_jax.export --workdir=DIR [--step=N] --out=FILE.safetensors
[--layout=amy|kyutai|transformers] [--with_heads] [--with_discriminator]``

Layouts of the codec file (``FILE.safetensors``):

* ``amy`` (default): the original Amy-LM model's state dict, all ``n_q`` slots (321 tensors at
  full size); codebooks as ``embedding_sum`` / ``cluster_usage`` / ``_initialized``. Loads
  strictly into moshi's Mimi with ``SplitResidualVectorQuantizer(n_q, n_q_semantic=2, ...)``.
* ``kyutai``: Kyutai's 32-slot Mimi (``n_q - 1`` slots, ``n_q_semantic = 1``): the prosody
  codebook (global index 1) is dropped, with a warning; the remaining codes are Amy's codes
  without row 1, because the acoustic RVQ does not depend on the semantic branch.
* ``transformers``: ``transformers.MimiModel`` (see :mod:`amylm_jax.export.hf_layout`), with
  the matching ``MimiConfig`` written to ``FILE.config.json``.

``--with_heads`` / ``--with_discriminator`` write ``FILE.extra.safetensors`` with
``wavlm_proj.*`` / ``llm_proj.*`` (the original's module names, kinds from the run config) and
``discriminator.*`` (audiocraft's MS-STFT discriminator, weight-norm ``weight_g`` /
``weight_v``). Every file carries safetensors metadata (``format=pt``, the layout, the step,
the codec config; head kinds and discriminator config in the extra file).

Export then import is the identity, bit for bit, except that the Flax-only ``countdown``
(calls until the next dead-code check) restarts at ``check_unused_every`` as it does in
PyTorch, and that a ``kyutai`` file has no prosody slot (it comes back with fresh defaults).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import struct
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import flags
from safetensors.numpy import save

from amylm_jax import cli, paths
from amylm_jax.checkpoint import CheckpointError, resolve_step, restore_run_state
from amylm_jax.config import CodecConfig, DiscConfig, HeadsConfig, TrainConfig, from_dict
from amylm_jax.export import hf_layout
from amylm_jax.export.disc_layout import disc_from_torch, disc_to_torch
from amylm_jax.export.from_torch import (
    ImportReport,
    flax_to_torch,
    load_torch_state,
    torch_to_flax,
)
from amylm_jax.export.torch_layout import is_prosody_key
from amylm_jax.models.heads import head_from_torch, head_to_torch
from amylm_jax.state import generator_weights

log = logging.getLogger("amylm_jax.export")

LAYOUTS: tuple[str, ...] = ("amy", "kyutai", "transformers")
HEAD_PREFIXES = {"wavlm_head": "wavlm_proj", "llm_head": "llm_proj"}
DISC_PREFIX = "discriminator."
KYUTAI_WARNING = (
    "layout 'kyutai' drops codebook 1 (the prosody residual of rvq_first): the file has "
    "{n} slots and decodes without prosody; use layout 'amy' to keep it"
)


class ExportError(ValueError):
    """A user-facing export/import error (no checkpoint, unknown step or layout, bad file)."""


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """Files written by :func:`export_run` and the warnings raised on the way."""

    codec: str
    config_json: str | None
    extra: str | None
    step: int
    warnings: tuple[str, ...]


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")


def _numpy_tree(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _numpy_tree(v) for k, v in tree.items()}
    return np.asarray(tree)


# ------------------------------------------------------------------------------- codec
def codec_state_dict(
    variables: Mapping[str, Any], config: CodecConfig, layout: str = "amy"
) -> dict[str, np.ndarray]:
    """PyTorch state dict (numpy float32) of ``{"params", "codebooks"}`` in ``layout``."""
    _check_layout(layout)
    if layout == "transformers":
        return hf_layout.amy_to_transformers(flax_to_torch(variables, config, "amy"), config)
    return flax_to_torch(variables, config, layout)  # type: ignore[arg-type]


def codec_from_state_dict(
    state: Mapping[str, Any], config: CodecConfig, layout: str = "amy"
) -> tuple[dict[str, Any], ImportReport]:
    """Inverse of :func:`codec_state_dict`: ``({"params", "codebooks"}, report)``.

    Every tensor of ``config`` must be present except, for ``kyutai``, the dropped prosody
    slot (fresh defaults, listed in ``report.missing``); anything else missing or unexpected
    raises :class:`ExportError`.
    """
    _check_layout(layout)
    state = {k: np.asarray(v) for k, v in state.items()}
    if layout == "transformers":
        try:
            state = hf_layout.transformers_to_amy(state, config)
        except KeyError as err:
            raise ExportError(f"layout 'transformers': {err.args[0]}") from None
    elif layout == "kyutai":
        extra = sorted(k for k in state if is_prosody_key(k))
        if extra:
            raise ExportError(f"layout 'kyutai' has no prosody slot, but the file has {extra}")
    try:
        variables, report = torch_to_flax(state, config)
    except ValueError as err:
        raise ExportError(f"layout {layout!r}: {err}") from None
    allowed = set()
    if layout == "kyutai":
        allowed = {k for k in report.missing if is_prosody_key(k)}
    missing = [k for k in report.missing if k not in allowed]
    if missing or report.unexpected:
        raise ExportError(
            f"state dict does not match layout {layout!r} for this config: "
            f"missing={missing} unexpected={list(report.unexpected)}"
        )
    return variables, report


def import_torch(path: str | os.PathLike, layout: str, config: CodecConfig) -> dict[str, Any]:
    """Codec variables ``{"params", "codebooks"}`` from a file written by the export."""
    _check_layout(layout)
    written = read_metadata(path).get("layout")
    if written is not None and written != layout:
        raise ExportError(f"{os.fspath(path)} was exported with layout {written!r}, not {layout!r}")
    variables, _ = codec_from_state_dict(load_torch_state(path), config, layout)
    return variables


# ------------------------------------------------------------------------------- heads + D
def extra_state_dict(
    gen_params: Mapping[str, Any] | None = None,
    heads: HeadsConfig | None = None,
    disc_params: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """``wavlm_proj.*`` / ``llm_proj.*`` (if ``gen_params``) and ``discriminator.*`` tensors."""
    out: dict[str, np.ndarray] = {}
    if gen_params is not None:
        heads = heads or HeadsConfig()
        kinds = {"wavlm_head": heads.wavlm, "llm_head": heads.llm}
        for name, prefix in HEAD_PREFIXES.items():
            if name in gen_params:  # a run without the LLM branch has no llm_head
                out.update(head_to_torch(_numpy_tree(gen_params[name]), kinds[name], prefix))
    if disc_params is not None:
        disc = disc_to_torch(_numpy_tree(disc_params))
        out.update({DISC_PREFIX + k: v for k, v in disc.items()})
    return out


def extra_from_state_dict(
    state: Mapping[str, Any], heads: HeadsConfig | None = None
) -> dict[str, Any]:
    """Inverse of :func:`extra_state_dict`: a dict with ``wavlm_head`` / ``llm_head`` (params
    subtrees, when present) and ``disc`` (the discriminator's params, when present)."""
    heads = heads or HeadsConfig()
    kinds = {"wavlm_head": heads.wavlm, "llm_head": heads.llm}
    out: dict[str, Any] = {}
    for name, prefix in HEAD_PREFIXES.items():
        if any(k.startswith(prefix + ".") for k in state):
            try:
                out[name] = head_from_torch(dict(state), kinds[name], prefix)
            except KeyError as err:
                kind = kinds[name]
                raise ExportError(f"{prefix}: missing {err} for head kind {kind!r}") from None
    disc = {k[len(DISC_PREFIX) :]: v for k, v in state.items() if k.startswith(DISC_PREFIX)}
    if disc:
        out["disc"] = disc_from_torch(disc)
    known = tuple(p + "." for p in HEAD_PREFIXES.values()) + (DISC_PREFIX,)
    unexpected = sorted(k for k in state if not k.startswith(known))
    if unexpected:
        raise ExportError(f"unexpected tensors in the extra file: {unexpected}")
    return out


def import_extra(path: str | os.PathLike, heads: HeadsConfig | None = None) -> dict[str, Any]:
    """Heads / discriminator params from an ``.extra.safetensors`` file.

    Head kinds come from ``heads`` or, by default, from the file's metadata.
    """
    if heads is None:
        meta = read_metadata(path)
        heads = HeadsConfig(**json.loads(meta["heads"])) if "heads" in meta else HeadsConfig()
    return extra_from_state_dict(load_torch_state(path), heads)


# ------------------------------------------------------------------------------- files
def file_paths(out: str | os.PathLike) -> tuple[str, str, str]:
    """``(codec, config_json, extra)`` paths for ``--out``: ``FILE.safetensors``,
    ``FILE.config.json``, ``FILE.extra.safetensors``."""
    out = os.fspath(out)
    stem = out[: -len(".safetensors")] if out.endswith(".safetensors") else out
    return out, stem + ".config.json", stem + ".extra.safetensors"


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata stored in a safetensors file's header (local path or URL).

    Reads only the header: its 8-byte little-endian length, then the JSON header.
    """
    try:
        (size,) = struct.unpack("<Q", paths.read_range(path, 0, 8))
        header = json.loads(paths.read_range(path, 8, 8 + size))
    except FileNotFoundError:
        raise ExportError(f"{os.fspath(path)}: no such file") from None
    except (struct.error, ValueError) as err:
        raise ExportError(f"{os.fspath(path)}: not a safetensors file ({err})") from None
    return dict(header.get("__metadata__") or {})


def _save(path: str, tensors: Mapping[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write a safetensors file whole (local path or URL)."""
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    paths.write_bytes(path, save(tensors, metadata={"format": "pt", **metadata}))


def _codec_json(config: CodecConfig) -> str:
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def codec_config_of(path: str | os.PathLike) -> CodecConfig:
    """The :class:`CodecConfig` stored in an exported file's metadata."""
    meta = read_metadata(path)
    if "codec_config" not in meta:
        raise ExportError(f"{os.fspath(path)}: no codec_config in the metadata")
    return from_dict(CodecConfig, json.loads(meta["codec_config"]))


def checkpoint_step(workdir: str, step: int | None) -> int:
    """The step to export (latest by default), with clear errors for a bad workdir/step."""
    try:
        return resolve_step(workdir, step)
    except CheckpointError as err:
        raise ExportError(str(err)) from None


def export_run(
    workdir: str,
    out: str | os.PathLike,
    step: int | None = None,
    layout: str = "amy",
    with_heads: bool = False,
    with_discriminator: bool = False,
    ema: bool = False,
) -> ExportResult:
    """Export a run's checkpoint (latest or ``step``) to PyTorch safetensors files; ``ema``
    exports the moving average of the generator's weights instead of the raw ones."""
    _check_layout(layout)
    step = checkpoint_step(workdir, step)
    cfg, state = restore_run_state(workdir, step)
    return export_state(
        cfg,
        state,
        out,
        step,
        layout,
        with_heads=with_heads,
        with_discriminator=with_discriminator,
        ema=ema,
    )


def export_state(
    cfg: TrainConfig,
    state: Any,
    out: str | os.PathLike,
    step: int,
    layout: str = "amy",
    with_heads: bool = False,
    with_discriminator: bool = False,
    ema: bool = False,
) -> ExportResult:
    """Write the files of :func:`export_run` from an in-memory ``(TrainConfig, TrainState)``."""
    _check_layout(layout)
    codec_path, json_path, extra_path = file_paths(out)
    try:
        gen_params = generator_weights(state, ema)
    except ValueError as err:
        raise ExportError(str(err)) from None
    variables = {
        "params": _numpy_tree(gen_params["codec"]),
        "codebooks": _numpy_tree(state.codebooks),
    }
    warnings: list[str] = []
    if layout == "kyutai":
        warnings.append(KYUTAI_WARNING.format(n=cfg.codec.quantizer.n_q - 1))
    for message in warnings:
        log.warning(message)
    tensors = codec_state_dict(variables, cfg.codec, layout)
    meta = {
        "layout": layout,
        "step": str(step),
        "weights": "ema" if ema else "raw",
        "codec_config": _codec_json(cfg.codec),
    }
    _save(codec_path, tensors, meta)
    written_json = None
    if layout == "transformers":
        paths.write_text(json_path, hf_layout.transformers_config(cfg.codec).to_json_string())
        written_json = json_path
    written_extra = None
    if with_heads or with_discriminator:
        extra = extra_state_dict(
            gen_params if with_heads else None,
            cfg.heads,
            state.disc_params if with_discriminator else None,
        )
        extra_meta = {"step": str(step), "weights": "ema" if ema else "raw"}
        if with_heads:
            extra_meta["heads"] = json.dumps(dataclasses.asdict(cfg.heads))
        if with_discriminator:
            extra_meta["disc_config"] = json.dumps(dataclasses.asdict(cfg.disc))
        _save(extra_path, extra, extra_meta)
        written_extra = extra_path
    log.info("exported step %d (%s layout) to %s", step, layout, codec_path)
    return ExportResult(codec_path, written_json, written_extra, step, tuple(warnings))


def disc_config_of(path: str | os.PathLike) -> DiscConfig:
    """The discriminator config stored in an extra file's metadata."""
    meta = read_metadata(path)
    if "disc_config" not in meta:
        raise ExportError(f"{os.fspath(path)}: no disc_config in the metadata")
    return from_dict(DiscConfig, json.loads(meta["disc_config"]))


# ------------------------------------------------------------------------------- CLI
FLAGS = cli.new_flags()
flags.DEFINE_string(
    "workdir", None, "Training run directory, local or URL (with checkpoints/).", flag_values=FLAGS
)
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).", flag_values=FLAGS)
flags.DEFINE_string("out", None, "Output FILE.safetensors (local or URL).", flag_values=FLAGS)
flags.DEFINE_enum("layout", "amy", list(LAYOUTS), "Layout of the codec file.", flag_values=FLAGS)
flags.DEFINE_bool(
    "with_heads", False, "Write wavlm_proj/llm_proj to the extra file.", flag_values=FLAGS
)
flags.DEFINE_bool(
    "with_discriminator", False, "Write discriminator.* to the extra file.", flag_values=FLAGS
)
flags.DEFINE_bool(
    "ema",
    False,
    "Export the moving average of the generator's weights (runs with optim.ema_decay > 0).",
    flag_values=FLAGS,
)


def _main(args: list[str]) -> int:
    if args:
        raise cli.UsageError(f"unexpected arguments {args}; see --help")
    if not FLAGS.workdir or not FLAGS.out:
        raise cli.UsageError("--workdir and --out are required")
    result = export_run(
        FLAGS.workdir,
        FLAGS.out,
        step=FLAGS.step,
        layout=FLAGS.layout,
        with_heads=FLAGS.with_heads,
        with_discriminator=FLAGS.with_discriminator,
        ema=FLAGS.ema,
    )
    for message in result.warnings:
        print(f"WARNING: {message}", file=sys.stderr)
    for path in (result.codec, result.config_json, result.extra):
        if path:
            print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool on ``argv`` (without the program name); returns the exit status."""
    return cli.run(_main, FLAGS, "amylm_jax.export", __doc__, argv)
