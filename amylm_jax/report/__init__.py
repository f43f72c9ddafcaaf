"""The loss health report: a run's metrics judged against the metric bands of docs/metrics.md.

``runlog`` reads a run's metrics, ``rules`` holds the bands and diagnoses (also used live by the
trainer), ``health`` builds and formats the report, ``plots`` draws it, ``command`` is the
command line (``python -m amylm_jax.report``).
"""

from amylm_jax.report.command import main
from amylm_jax.report.health import build_report, detect_phase, format_report
from amylm_jax.report.runlog import RunLog, load_run, records_to_log

__all__ = [
    "RunLog",
    "build_report",
    "detect_phase",
    "format_report",
    "load_run",
    "main",
    "records_to_log",
]
