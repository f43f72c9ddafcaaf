"""``python -m amylm_jax.report PATH [--json] [--plots=DIR]``: the loss health report of a run.

PATH is a training workdir (local or a URL such as ``gs://bucket/run``), one ``metrics.jsonl``
file, or a text file of ``train/name:value`` lines as pasted from a log. The report gives, per
quick-reference metric, the latest value, its status band (docs/metrics.md), the cosine
similarity of the distillation losses, the trend over the last epochs, the ratios users watch,
the training phase and diagnoses with config-level fixes. ``--plots`` writes one PNG per metric
(local folder or URL).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from absl import flags

from amylm_jax import cli
from amylm_jax.report.health import build_report, format_report
from amylm_jax.report.plots import write_plots
from amylm_jax.report.runlog import load_run

FLAGS = cli.new_flags()
flags.DEFINE_bool("json", False, "Print the report as JSON.", flag_values=FLAGS)
flags.DEFINE_string(
    "plots", None, "Write one PNG per metric to this folder or URL.", flag_values=FLAGS
)


def _main(positional: list[str]) -> int:
    if len(positional) != 1:
        raise cli.UsageError("give exactly one PATH (workdir, metrics.jsonl or a text file)")
    log = load_run(positional[0])
    report = build_report(log)
    if FLAGS.plots:
        report["plots"] = [str(p) for p in write_plots(log, FLAGS.plots)]
    print(json.dumps(report, indent=2) if FLAGS.json else format_report(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool on ``argv`` (without the program name); returns the exit status."""
    return cli.run(_main, FLAGS, "amylm_jax.report", __doc__, argv)
