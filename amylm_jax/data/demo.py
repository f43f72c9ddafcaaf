"""The bundled demo corpus and its feature store, so `--config.data.store=demo` just works.

Why: a fresh checkout should train end to end without downloading a dataset or a teacher. The
corpus (48 espeak-ng utterances with exact word times, see `demo_corpus/README.md`) ships in the
package; its store is built on first use with the `tiny-random` teachers into a cache directory
(`$AMYLM_CACHE` or `~/.cache/amylm_jax`), guarded by a file lock so concurrent first uses
(several test workers, several local processes) build it once.

    python -m amylm_jax.data.demo build [--out=DIR] [--force]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from amylm_jax.data.store import MANIFEST

# Bump when the corpus, the tiny-random teachers or the store format change.
DEMO_STORE_VERSION = 1


def demo_corpus_dir() -> Path:
    """Directory of the bundled corpus (`alignments.jsonl` and `wavs/`)."""
    return Path(__file__).resolve().parent / "demo_corpus"


def default_demo_store_dir() -> Path:
    """Cache location of the demo store: `$AMYLM_CACHE` or `~/.cache/amylm_jax`."""
    root = os.environ.get("AMYLM_CACHE") or Path.home() / ".cache" / "amylm_jax"
    return Path(root).expanduser() / f"demo_store_{DEMO_STORE_VERSION}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_demo_store(out_dir: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Return the demo store directory, building it first if it is missing (or `force`).

    The build runs `amylm_jax.data.prepare.build_store` on the bundled alignments with the
    tiny-random teachers; the store writer's atomic rename means an interrupted build leaves
    no store behind, and the lock makes a second caller wait and then reuse the first's.
    """
    out = Path(out_dir).expanduser() if out_dir is not None else default_demo_store_dir()
    if not force and (out / MANIFEST).is_file():
        return out
    with _locked(out.with_name(out.name + ".lock")):
        if (out / MANIFEST).is_file() and not force:
            return out  # built by someone else while we waited
        if force and out.exists():
            shutil.rmtree(out)
        from amylm_jax.data.prepare import build_store

        build_store(
            demo_corpus_dir() / "alignments.jsonl",
            out,
            wavlm="tiny-random",
            llm="tiny-random",
            keep_cache=False,
        )
    return out


def main(argv: list[str] | None = None) -> None:
    """`build [--out=DIR] [--force]`: build the demo store and print its location."""
    parser = argparse.ArgumentParser(prog="python -m amylm_jax.data.demo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the demo feature store")
    build.add_argument("--out", default=None, help="store directory (default: the cache)")
    build.add_argument("--force", action="store_true", help="rebuild even if it exists")
    args = parser.parse_args(argv)
    print(build_demo_store(args.out, force=args.force))


if __name__ == "__main__":
    main()
