"""Build or check an aligned feature store.

    # from word alignments + audio (teacher features extracted here); make the alignments
    # from audio files with python -m amylm_jax.align. A record with offset/duration (seconds)
    # is that segment of its audio file.
    python -m amylm_jax.prepare --manifest=align.jsonl --out=store \\
        [--wavlm=microsoft/wavlm-large|PATH|tiny-random] [--llm=Qwen/Qwen3-1.7B|PATH|tiny-random] \\
        [--batch_size=8] [--device=cpu|cuda] [--skip_bad] [--cache_dir=store.work]
    # from the original on-disk HF dataset (features already extracted)
    python -m amylm_jax.prepare --import_hf=data/Amy-LM-Dataset --out=store [--norepair_d1]
    # on N hosts at once: each extracts its block of the manifest into OUT/parts/...
    python -m amylm_jax.prepare --manifest=align.jsonl --out=store --num_shards=N --shard_index=i
    #   (or leave both out inside a SLURM array/multi-task job or on TPU VM workers), then once:
    python -m amylm_jax.prepare --join --out=store
    # validate a store (local or gs://...)
    python -m amylm_jax.prepare --check=store

A thin entry point: the work is done by `amylm_jax.data.extract.build_store`,
`amylm_jax.data.importer.import_hf_dataset` and `amylm_jax.data.store.check_store`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from absl import flags

from amylm_jax import cli
from amylm_jax.data.extract import build_store, join_parts, resolve_shards
from amylm_jax.data.importer import import_hf_dataset
from amylm_jax.data.store import check_store
from amylm_jax.data.teachers import DEFAULT_LLM, DEFAULT_WAVLM

FLAGS = cli.new_flags()
flags.DEFINE_string("manifest", None, "Alignment manifest (JSONL or JSON list).", flag_values=FLAGS)
flags.DEFINE_string(
    "import_hf", None, "Original dataset directory (datasets.load_from_disk).", flag_values=FLAGS
)
flags.DEFINE_string("check", None, "Validate this store and print its report.", flag_values=FLAGS)
flags.DEFINE_string("out", None, "Output store directory.", flag_values=FLAGS)
flags.DEFINE_string(
    "wavlm", DEFAULT_WAVLM, "WavLM hub id, local directory or tiny-random.", flag_values=FLAGS
)
flags.DEFINE_string(
    "llm",
    DEFAULT_LLM,
    "Causal LM hub id, local directory, tiny-random, or none (a store without LLM features, "
    "for runs without the LLM branch).",
    flag_values=FLAGS,
)
flags.DEFINE_integer("batch_size", 8, "Clips per teacher forward pass.", flag_values=FLAGS)
flags.DEFINE_string(
    "device", "cpu", "Torch device for the teachers (cpu, cuda, cuda:1...).", flag_values=FLAGS
)
flags.DEFINE_bool(
    "skip_bad",
    False,
    "Skip bad clips (listed in the manifest) instead of failing.",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "cache_dir", None, "Per-clip feature cache (default: <out>.work).", flag_values=FLAGS
)
flags.DEFINE_bool(
    "repair_d1",
    True,
    "Import: trim the original's batch-padded WavLM sequences before pooling (defect D1); "
    "--norepair_d1 pools them as stored, as the original trainer did.",
    flag_values=FLAGS,
)
flags.DEFINE_enum(
    "wavlm_pooling",
    "adaptive",
    ["adaptive", "window"],
    "How 50 Hz WavLM frames become 12.5 Hz targets: 'adaptive' (adaptive average pooling, the "
    "original's) or 'window' (centred average pool of kernel 8, stride 4, Mimi's).",
    flag_values=FLAGS,
)
flags.DEFINE_bool(
    "repair_times",
    False,
    "Monotonise out-of-order token times instead of failing.",
    flag_values=FLAGS,
)
flags.DEFINE_string("split", None, "Import: split of a DatasetDict.", flag_values=FLAGS)
flags.DEFINE_integer(
    "num_shards",
    None,
    "Split the manifest into N contiguous blocks, one per process (default: from the SLURM "
    "array / SLURM task / TPU worker environment, else 1).",
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "shard_index", None, "This process's block, 0..N-1 (default: from the environment).",
    flag_values=FLAGS,
)  # fmt: skip
flags.DEFINE_list(
    "group_fields",
    ["speaker", "source"],
    "Manifest record fields kept per clip for grouped validation splits (data.val_group_by); "
    "'source' defaults to the record's audio path.",
    flag_values=FLAGS,
)
flags.DEFINE_bool(
    "join", False, "Join the finished parts in --out into one store manifest.", flag_values=FLAGS
)
flags.DEFINE_bool("overwrite", False, "Replace an existing store at --out.", flag_values=FLAGS)


def _main(args: list[str]) -> int:
    if args:
        raise cli.UsageError(f"unexpected arguments {args}; see --help")
    report = run_mode()
    report = {k: v for k, v in report.items() if k != "shards"}
    if "clip_groups" in report:  # one value per clip: name the fields only
        report["clip_groups"] = sorted(report["clip_groups"])
    if "feature_stats" in report:  # one mean and std per dimension: summarise
        report["feature_stats"] = {
            name: {"frames": st["frames"], "dims": len(st["mean"])}
            for name, st in report["feature_stats"].items()
        }
    print(json.dumps(report, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool on ``argv`` (without the program name); returns the exit status."""
    return cli.run(_main, FLAGS, "amylm_jax.prepare", __doc__, argv)


def run_mode() -> dict:
    """Dispatch to build, import or check; exactly one mode must be given."""
    modes = [m for m in ("manifest", "import_hf", "check", "join") if FLAGS[m].value]
    if len(modes) != 1:
        raise cli.UsageError("give exactly one of --manifest, --import_hf, --check, --join")
    if modes != ["check"] and not FLAGS.out:
        raise cli.UsageError("--out is required")
    if FLAGS.check:
        report = check_store(FLAGS.check)
    elif FLAGS.join:
        report = join_parts(FLAGS.out)
    elif FLAGS.import_hf:
        report = import_hf_dataset(
            FLAGS.import_hf,
            FLAGS.out,
            repair_d1=FLAGS.repair_d1,
            skip_bad=FLAGS.skip_bad,
            repair_times=FLAGS.repair_times,
            split=FLAGS.split,
            overwrite=FLAGS.overwrite,
        )
    else:
        num_shards, shard_index = resolve_shards(FLAGS.num_shards, FLAGS.shard_index)
        report = build_store(
            FLAGS.manifest,
            FLAGS.out,
            wavlm=FLAGS.wavlm,
            llm=FLAGS.llm,
            batch_size=FLAGS.batch_size,
            device=FLAGS.device,
            skip_bad=FLAGS.skip_bad,
            cache_dir=FLAGS.cache_dir,
            repair_times=FLAGS.repair_times,
            overwrite=FLAGS.overwrite,
            num_shards=num_shards,
            shard_index=shard_index,
            wavlm_pooling=FLAGS.wavlm_pooling,
            group_fields=tuple(FLAGS.group_fields),
        )
    return report


if __name__ == "__main__":
    sys.exit(main())
