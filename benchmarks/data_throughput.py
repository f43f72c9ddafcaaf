"""Input pipeline throughput: audio-seconds of training crops produced per second (per worker).

Why: the trainer consumes `batch_size * segment_seconds` audio-seconds per step; this tells you
how many grain workers a host needs to keep the accelerators fed (steps/s x audio-seconds per
step / the per-worker figure). Reads, decodes, crops and batches exactly like training.

    python benchmarks/data_throughput.py                       # demo store, 0 and 2 workers
    python benchmarks/data_throughput.py --store=/path/store --workers=0,4,8 --json=out.json
    python benchmarks/data_throughput.py --synthetic-clips=256    # random store, real dims

`workers=0` runs everything in the calling process (with grain's 2 reader threads); it counts as
one worker in the per-worker column.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time

import numpy as np

from amylm_jax.data import pipeline
from amylm_jax.data.demo import resolve_store
from amylm_jax.data.store import StoreWriter, frames_for_duration, open_store


def measure(cfg: pipeline.DataConfig, batches: int, warmup: int) -> dict[str, float]:
    """Time `batches` training batches after `warmup` (worker start-up excluded)."""
    it = pipeline.make_train_iterator(cfg)
    try:
        for _ in range(warmup):
            next(it)
        t0 = time.perf_counter()
        checksum = 0.0
        for _ in range(batches):
            checksum += float(np.abs(next(it)["audio"][:, :10]).sum())  # touch the data
        elapsed = time.perf_counter() - t0
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
    audio_s = batches * cfg.batch_size * cfg.segment_seconds
    workers = max(cfg.worker_count, 1)
    return {
        "workers": cfg.worker_count,
        "batches": batches,
        "seconds": elapsed,
        "batches_per_s": batches / elapsed,
        "audio_s_per_s": audio_s / elapsed,
        "audio_s_per_s_per_worker": audio_s / elapsed / workers,
    }


def synthetic_store(out_dir: str, clips: int, wavlm_dim: int = 1024, llm_dim: int = 2048) -> str:
    """A store of random 2-4 s clips at the real teacher dims (WavLM-large, Qwen3-1.7B)."""
    rng = np.random.default_rng(0)
    with StoreWriter(
        out_dir, wavlm_dim=wavlm_dim, llm_dim=llm_dim, teachers={"wavlm": "rand", "llm": "rand"}
    ) as w:
        for i in range(clips):
            n = int(rng.integers(48000, 96000))
            t = frames_for_duration(n / 24000)
            w.add(
                {
                    "clip_id": f"syn{i:05d}",
                    "audio": rng.integers(-9000, 9000, n).astype(np.int16),
                    "wavlm": rng.normal(size=(t, wavlm_dim)).astype(np.float16),
                    "llm": rng.normal(size=(t, llm_dim)).astype(np.float16),
                    "duration": n / 24000,
                    "transcript": "",
                }
            )
    return out_dir


def main(argv: list[str] | None = None) -> None:
    """Parse flags, run one measurement per worker count, print a table (and JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="demo", help="store directory or 'demo'")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--segment-seconds", type=float, default=1.0)
    parser.add_argument("--workers", default="0,2", help="comma-separated worker counts")
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--synthetic-clips",
        type=int,
        default=0,
        help="ignore --store; time a temporary random store of this many clips at 1024/2048 dims",
    )
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    tmp, label = None, args.store
    if args.synthetic_clips:
        tmp = tempfile.TemporaryDirectory()
        args.store = synthetic_store(f"{tmp.name}/store", args.synthetic_clips)
        label = f"synthetic ({args.synthetic_clips} random clips)"
    path = resolve_store(args.store)
    store = open_store(path)
    base = pipeline.DataConfig(
        store=str(path), batch_size=args.batch_size, segment_seconds=args.segment_seconds
    )
    rows = []
    for w in (int(x) for x in args.workers.split(",")):
        rows.append(measure(dataclasses.replace(base, worker_count=w), args.batches, args.warmup))
    print(
        f"store {label}: {len(store)} clips, {store.manifest['total_seconds']:.0f} s, "
        f"dims {store.wavlm_dim}/{store.llm_dim}; batch {args.batch_size} x "
        f"{args.segment_seconds} s; {platform.processor() or platform.machine()}"
    )
    print(f"{'workers':>8} {'batches/s':>10} {'audio s/s':>10} {'audio s/s/worker':>17}")
    for r in rows:
        print(
            f"{r['workers']:>8} {r['batches_per_s']:>10.1f} {r['audio_s_per_s']:>10.0f} "
            f"{r['audio_s_per_s_per_worker']:>17.0f}"
        )
    if args.json:
        meta = {
            "store": label,
            "num_clips": len(store),
            "wavlm_dim": store.wavlm_dim,
            "llm_dim": store.llm_dim,
            "batch_size": args.batch_size,
            "segment_seconds": args.segment_seconds,
        }
        with open(args.json, "w") as f:
            json.dump({**meta, "results": rows}, f, indent=2)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
