"""The bundled demo corpus and its feature store, so `--config.data.store=demo` just works.

Why: a fresh checkout should train end to end without downloading a dataset or a teacher. The
corpus (48 espeak-ng utterances with exact word times, see `demo_corpus/README.md`) ships in the
package; its store is built on first use with the `tiny-random` teachers into a cache directory
(`$AMYLM_CACHE` or `~/.cache/amylm_jax`), guarded by a file lock so concurrent first uses
(several test workers, several local processes) build it once.

    python -m amylm_jax.data.demo build [--out=DIR] [--force]
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from absl import flags

from amylm_jax import cli
from amylm_jax.data.extract import build_store
from amylm_jax.data.store import MANIFEST, locate_store

#: The store name that means "the bundled demo corpus".
DEMO_NAME = "demo"

# Bump when the corpus, the tiny-random teachers or the store format change.
DEMO_STORE_VERSION = 2


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

    The build runs `amylm_jax.data.extract.build_store` on the bundled alignments with the
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
        build_store(
            demo_corpus_dir() / "alignments.jsonl",
            out,
            wavlm="tiny-random",
            llm="tiny-random",
            keep_cache=False,
        )
    return out


def resolve_store(path_or_name: str | os.PathLike) -> Path:
    """Turn a store argument into a store directory.

    "demo" is reserved for the bundled demo corpus: its store is built on first use into the
    cache (:func:`build_demo_store`). Anything else must be an existing store directory.
    """
    if str(path_or_name) == DEMO_NAME:
        return build_demo_store()
    return locate_store(path_or_name)


FLAGS = cli.new_flags()
flags.DEFINE_string("out", None, "Store directory (default: the cache).", flag_values=FLAGS)
flags.DEFINE_bool("force", False, "Rebuild even if the store exists.", flag_values=FLAGS)


def _main(args: list[str]) -> int:
    if args != ["build"]:
        raise cli.UsageError("usage: python -m amylm_jax.data.demo build [--out=DIR] [--force]")
    print(build_demo_store(FLAGS.out, force=FLAGS.force))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``build [--out=DIR] [--force]``: build the demo store and print its location."""
    return cli.run(_main, FLAGS, "amylm_jax.data.demo", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
