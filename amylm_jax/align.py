"""Word-align audio files into the manifest that ``python -m amylm_jax.prepare`` reads.

    # transcribed corpus (a .txt/.lab beside each audio file, or --transcripts=TABLE):
    python -m amylm_jax.align --audio=corpus/ --out=corpus/align.jsonl \\
        [--aligner=pocketsphinx | --aligner=ctc --model=facebook/wav2vec2-base-960h|PATH]
    # audio without transcripts: recognised by Whisper (or pocketsphinx's English model)
    python -m amylm_jax.align --audio='calls/**/*.flac' --transcripts=none --out=calls.jsonl \
        --aligner=whisper --model=openai/whisper-small|PATH [--language=en] [--device=cuda]
    # a Hugging Face dataset saved with save_to_disk:
    python -m amylm_jax.align --audio=data/my_ds --text_column=text --out=my_ds.jsonl
    # on N hosts: each aligns its block of the (sorted) files, then join once
    python -m amylm_jax.align ... --num_shards=N --shard_index=i   # or from SLURM / TPU env
    python -m amylm_jax.align --join --out=corpus/align.jsonl

Files longer than --max_segment_s are cut into segments at pauses between words. Bad inputs
are skipped, counted and listed in OUT.report.json; a rerun resumes where a killed run stopped.
The work is done by `amylm_jax.data.wordalign.align_corpus`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from absl import flags

from amylm_jax import cli
from amylm_jax.data import aligners
from amylm_jax.data.extract import resolve_shards
from amylm_jax.data.wordalign import align_corpus, join_parts

FLAGS = cli.new_flags()
flags.DEFINE_string(
    "audio",
    None,
    "Audio to align: a folder (recursively), a glob, a text file of paths, or a saved "
    "Hugging Face dataset.",
    flag_values=FLAGS,
)
flags.DEFINE_string("out", None, "The manifest to write (JSONL).", flag_values=FLAGS)
flags.DEFINE_string(
    "transcripts",
    "auto",
    "auto (a .txt/.lab file beside each audio file, where there is one), none (recognise "
    "every file), or a table: JSONL with audio+transcript, or audio<TAB>text lines.",
    flag_values=FLAGS,
)
flags.DEFINE_enum(
    "aligner",
    "pocketsphinx",
    list(aligners.ALIGNERS),
    "pocketsphinx (bundled English model, CPU; aligns or recognises), ctc (forced alignment "
    "with a transformers CTC model) or whisper (recognition with word timestamps).",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "model",
    None,
    "CTC or Whisper model: a local directory, a Hub name or tiny-random (default "
    f"{aligners.DEFAULT_CTC} / {aligners.DEFAULT_WHISPER}).",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "language", None, "Whisper: the spoken language (e.g. en); default: detected per file.",
    flag_values=FLAGS,
)  # fmt: skip
flags.DEFINE_float(
    "max_segment_s", 20.0, "Cut longer files into segments of at most this length.",
    flag_values=FLAGS,
)  # fmt: skip
flags.DEFINE_float("min_segment_s", 2.0, "Shortest segment cut from a long file.",
                   flag_values=FLAGS)  # fmt: skip
flags.DEFINE_float(
    "min_score",
    None,
    "Skip clips whose alignment score (mean log-probability per frame, 0 = certain) is lower.",
    flag_values=FLAGS,
)
flags.DEFINE_integer("batch_size", 8, "Files per aligner call.", flag_values=FLAGS)
flags.DEFINE_string("device", "cpu", "Torch device of a CTC/Whisper model (cpu, cuda...).",
                    flag_values=FLAGS)  # fmt: skip
flags.DEFINE_string("audio_column", "audio", "Dataset input: the audio column.", flag_values=FLAGS)
flags.DEFINE_string("text_column", None, "Dataset input: the transcript column.",
                    flag_values=FLAGS)  # fmt: skip
flags.DEFINE_string("id_column", None, "Dataset input: the clip id column (default: row number).",
                    flag_values=FLAGS)  # fmt: skip
flags.DEFINE_integer("num_shards", None, "Split the files into N blocks, one per process "
                     "(default: from the SLURM / TPU worker environment, else 1).",
                     flag_values=FLAGS)  # fmt: skip
flags.DEFINE_integer("shard_index", None, "This process's block, 0..N-1.", flag_values=FLAGS)
flags.DEFINE_bool("join", False, "Join the finished parts into --out.", flag_values=FLAGS)
flags.DEFINE_bool("overwrite", False, "Replace an existing manifest.", flag_values=FLAGS)


def _main(args: list[str]) -> int:
    if args:
        raise cli.UsageError(f"unexpected arguments {args}; see --help")
    if not FLAGS.out:
        raise cli.UsageError("--out is required")
    if FLAGS.join:
        report = join_parts(FLAGS.out)
    else:
        if not FLAGS.audio:
            raise cli.UsageError("--audio is required (or --join)")
        num_shards, shard_index = resolve_shards(FLAGS.num_shards, FLAGS.shard_index)
        report = align_corpus(
            FLAGS.audio,
            FLAGS.out,
            aligner=FLAGS.aligner,
            model=FLAGS.model,
            transcripts=FLAGS.transcripts,
            max_segment_s=FLAGS.max_segment_s,
            min_segment_s=FLAGS.min_segment_s,
            min_score=FLAGS.min_score,
            batch_size=FLAGS.batch_size,
            device=FLAGS.device,
            language=FLAGS.language,
            num_shards=num_shards,
            shard_index=shard_index,
            overwrite=FLAGS.overwrite,
            dataset_columns={"audio_column": FLAGS.audio_column,
                             "text_column": FLAGS.text_column, "id_column": FLAGS.id_column},
        )  # fmt: skip
    shown = {k: v for k, v in report.items() if k != "skipped"}
    shown["skipped_first"] = report["skipped"][:10]
    print(json.dumps(shown, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool on ``argv`` (without the program name); returns the exit status."""
    return cli.run(_main, FLAGS, "amylm_jax.align", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
