"""How close an aligner's word boundaries come to the demo corpus's exact espeak-ng times.

    python benchmarks/align_demo.py [--aligner=pocketsphinx|ctc|whisper] [--model=PATH]
        [--device=cpu|cuda] [--json]

Runs ``python -m amylm_jax.align`` on the 48 bundled demo wavs (with their transcripts for
pocketsphinx/ctc; recognition for whisper) and compares every word's start and end with the
times espeak-ng reported when it spoke the clip. Prints a table (or one JSON object):
clips aligned, words compared, and the boundary error's median, mean, 95th percentile, max and
the share of boundaries within 20 / 40 / 80 (one codec frame) / 160 ms. A recogniser's words are
compared only in clips whose recognised words equal the transcript's (case and punctuation
aside); ``words_matched`` says how many clips that was.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amylm_jax.data.demo import demo_corpus_dir  # noqa: E402
from amylm_jax.data.wordalign import align_corpus  # noqa: E402

THRESHOLDS_S = (0.02, 0.04, 0.08, 0.16)


def _norm(word: str) -> str:
    return re.sub(r"[^\w']", "", word).lower()


def boundary_errors(
    aligned: Sequence[Mapping], reference: Sequence[Mapping]
) -> tuple[np.ndarray, int]:
    """Absolute start and end errors (s) of every word of the clips whose word sequence matches
    the reference's; returns the errors and the number of clips compared."""
    got = {r["clip_id"]: r["words"] for r in aligned}
    errors, matched = [], 0
    for ref in reference:
        words = got.get(ref["clip_id"])
        if words is None or [_norm(w["word"]) for w in words] != [
            _norm(w["word"]) for w in ref["words"]
        ]:
            continue
        matched += 1
        for w, r in zip(words, ref["words"], strict=True):
            errors += [abs(w["start"] - r["start"]), abs(w["end"] - r["end"])]
    return np.asarray(errors, np.float64), matched


def summary(errors: np.ndarray) -> dict[str, float]:
    if errors.size == 0:
        return {}
    out = {
        "median_ms": float(np.median(errors) * 1e3),
        "mean_ms": float(np.mean(errors) * 1e3),
        "p95_ms": float(np.quantile(errors, 0.95) * 1e3),
        "max_ms": float(np.max(errors) * 1e3),
    }
    for t in THRESHOLDS_S:
        out[f"within_{round(t * 1e3)}ms"] = float(np.mean(errors <= t))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aligner", default="pocketsphinx")
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    corpus = demo_corpus_dir()
    table = corpus / "alignments.jsonl"
    reference = [json.loads(line) for line in table.read_text().splitlines() if line.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo.jsonl"
        start = time.perf_counter()
        report = align_corpus(
            str(corpus / "wavs"), out, aligner=args.aligner, model=args.model,
            device=args.device, progress=False,
            transcripts="none" if args.aligner == "whisper" else str(table),
        )  # fmt: skip
        seconds = time.perf_counter() - start
        aligned = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    errors, matched = boundary_errors(aligned, reference)
    result = {
        "aligner": args.aligner,
        "model": args.model,
        "clips": len(reference),
        "clips_aligned": report["clips"],
        "words_matched": matched,
        "boundaries": int(errors.size),
        "wall_s": round(seconds, 2),
        **{k: round(v, 4) for k, v in summary(errors).items()},
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>16}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
