"""Build or check an aligned feature store.

    # from word alignments + audio (teacher features extracted here)
    python -m amylm_jax.prepare --manifest=align.jsonl --out=store \\
        [--wavlm=microsoft/wavlm-large|PATH|tiny-random] [--llm=Qwen/Qwen3-1.7B|PATH|tiny-random] \\
        [--batch_size=8] [--device=cpu|cuda] [--skip_bad] [--cache_dir=store.work]
    # from the original on-disk HF dataset (features already extracted)
    python -m amylm_jax.prepare --import_hf=data/Amy-LM-Dataset --out=store [--repair_d1]
    # validate a store
    python -m amylm_jax.prepare --check=store

A thin entry point: the work is done by `amylm_jax.data.prepare.build_store`,
`amylm_jax.data.importer.import_hf_dataset` and `amylm_jax.data.store.check_store`.
"""

from __future__ import annotations

import json

from absl import app, flags

from amylm_jax.data.teachers import DEFAULT_LLM, DEFAULT_WAVLM

FLAGS = flags.FLAGS
flags.DEFINE_string("manifest", None, "Alignment manifest (JSONL or JSON list).")
flags.DEFINE_string("import_hf", None, "Original dataset directory (datasets.load_from_disk).")
flags.DEFINE_string("check", None, "Validate this store and print its report.")
flags.DEFINE_string("out", None, "Output store directory.")
flags.DEFINE_string("wavlm", DEFAULT_WAVLM, "WavLM hub id, local directory or tiny-random.")
flags.DEFINE_string("llm", DEFAULT_LLM, "Causal LM hub id, local directory or tiny-random.")
flags.DEFINE_integer("batch_size", 8, "Clips per teacher forward pass.")
flags.DEFINE_string("device", "cpu", "Torch device for the teachers (cpu, cuda, cuda:1...).")
flags.DEFINE_bool("skip_bad", False, "Skip bad clips (listed in the manifest) instead of failing.")
flags.DEFINE_string("cache_dir", None, "Per-clip feature cache (default: <out>.work).")
flags.DEFINE_bool("repair_d1", False, "Import: trim padded WavLM sequences before pooling (D1).")
flags.DEFINE_bool("repair_times", False, "Monotonise out-of-order token times instead of failing.")
flags.DEFINE_string("split", None, "Import: split of a DatasetDict.")
flags.DEFINE_bool("overwrite", False, "Replace an existing store at --out.")


def main(argv: list[str]) -> None:
    """Run the selected mode; data errors exit with their message (naming the clip)."""
    del argv
    try:
        report = run_mode()
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from err
    report = {k: v for k, v in report.items() if k != "shards"}
    print(json.dumps(report, indent=2))


def run_mode() -> dict:
    """Dispatch to build, import or check; exactly one mode must be given."""
    modes = [m for m in ("manifest", "import_hf", "check") if FLAGS[m].value]
    if len(modes) != 1:
        raise app.UsageError("give exactly one of --manifest, --import_hf, --check")
    if modes != ["check"] and not FLAGS.out:
        raise app.UsageError("--out is required")
    if FLAGS.check:
        from amylm_jax.data.store import check_store

        report = check_store(FLAGS.check)
    elif FLAGS.import_hf:
        from amylm_jax.data.importer import import_hf_dataset

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
        from amylm_jax.data.prepare import build_store

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
        )
    return report


if __name__ == "__main__":
    app.run(main)
