"""One path layer for local folders and object storage (``gs://``, ``s3://``, ...).

Every place the system reads or writes a run directory, a feature store, a weights file or an
export goes through :func:`as_path`, which returns an ``etils.epath.Path``: the path type that
orbax uses, backed by fsspec (gcsfs for ``gs://``) for URLs and by ``pathlib`` for local paths.
Local paths are made absolute (so a run's recorded paths survive a change of directory); URLs
are kept as they are.

Object stores have no append and no rename, so the writers here replace whole objects:
:func:`write_bytes` writes a local file through a temporary sibling and ``os.replace`` (never a
half-written file under the final name) and uploads a URL object in one request (an object
appears whole or not at all).

Emulators: when ``STORAGE_EMULATOR_HOST`` is set (as the GCS emulators and Google's clients
use it), :func:`configure_storage` points the checkpoint library's array store (tensorstore) at
the same endpoint with a test token, so a whole run works against an emulator. It also turns
off gcsfs's gRPC bucket-type probe, which emulators do not serve (it costs a 60 s timeout per
bucket); set ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=true`` yourself to keep it.
"""

from __future__ import annotations

import io
import os
import uuid
from typing import Any

from etils import epath

PathLike = str | os.PathLike


class StorageError(OSError):
    """A storage URL or path cannot be used (no bucket, no credentials, not what was expected)."""


def configure_storage() -> None:
    """Environment defaults for object storage; called by :func:`as_path` (idempotent)."""
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        url = emulator if "://" in emulator else f"http://{emulator}"
        os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)
        os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")


def is_url(path: PathLike) -> bool:
    """Whether ``path`` names object storage (has a ``scheme://``) rather than a local path."""
    return "://" in os.fspath(path) and not os.fspath(path).startswith("file://")


def as_path(path: PathLike) -> epath.Path:
    """An ``epath.Path`` for a local path (made absolute, ``~`` expanded) or a URL."""
    if isinstance(path, epath.Path) and is_url(path):
        return path
    text = os.fspath(path)
    if is_url(text):
        configure_storage()
        return epath.Path(text)
    if text.startswith("file://"):
        text = text[len("file://") :]
    return epath.Path(os.path.abspath(os.path.expanduser(text)))


def join(base: PathLike, *parts: str) -> epath.Path:
    return as_path(base).joinpath(*parts)


def write_bytes(path: PathLike, data: bytes) -> epath.Path:
    """Write ``data`` whole: local files via a temporary sibling and rename, URLs in one upload."""
    p = as_path(path)
    if is_url(p):
        p.write_bytes(data)
        return p
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def write_text(path: PathLike, text: str) -> epath.Path:
    return write_bytes(path, text.encode("utf-8"))


def _fs(path: PathLike) -> tuple[Any, str]:
    import fsspec  # object storage only

    return fsspec.core.url_to_fs(os.fspath(path))


def read_bytes(path: PathLike) -> bytes:
    """The bytes of a file or object; ``FileNotFoundError`` names the path.

    Objects are fetched whole and fresh (no cached size), so an object that another process
    rewrote reads back in full.
    """
    p = as_path(path)
    try:
        if is_url(p):
            fs, key = _fs(p)
            return fs.cat_file(key)
        return p.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: no such file") from None


def read_text(path: PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def list_names(path: PathLike) -> list[str]:
    """Names in a folder, sorted, read fresh (objects other processes wrote are seen); [] if
    the folder does not exist."""
    p = as_path(path)
    if not is_url(p):
        return sorted(x.name for x in p.iterdir()) if p.is_dir() else []
    fs, key = _fs(p)
    fs.invalidate_cache(key)
    try:
        return sorted(os.path.basename(x.rstrip("/")) for x in fs.ls(key, detail=False))
    except FileNotFoundError:
        return []


def exists(path: PathLike) -> bool:
    """Whether a file/object exists, asked fresh for URLs."""
    p = as_path(path)
    if not is_url(p):
        return p.exists()
    fs, key = _fs(p)
    fs.invalidate_cache(key)
    return fs.exists(key)


def read_range(path: PathLike, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of a file or object (one ranged read for URLs)."""
    p = as_path(path)
    if is_url(p):
        import fsspec  # object storage only

        fs, key = fsspec.core.url_to_fs(os.fspath(p))
        return fs.cat_file(key, start=start, end=end)
    with open(p, "rb") as f:
        f.seek(start)
        return f.read(end - start)


def upload(local: PathLike, target: PathLike) -> epath.Path:
    """Copy a local file to ``target`` (a URL: one streamed upload; local: copy + rename)."""
    t = as_path(target)
    if is_url(t):
        fs, key = _fs(t)
        fs.put_file(os.fspath(local), key)
        return t
    return write_bytes(t, epath.Path(local).read_bytes())


def save_figure(fig: Any, path: PathLike) -> epath.Path:
    """Save a matplotlib figure as PNG to a local path or URL."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return write_bytes(path, buf.getvalue())


def check_writable(path: PathLike, what: str = "workdir") -> epath.Path:
    """Fail fast, naming the URL, when ``path`` cannot be written (missing bucket, credentials).

    For a URL, writes and deletes a small probe object in the target folder; a local path only
    needs its parent directories to be creatable.
    """
    p = as_path(path)
    if not is_url(p):
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(f"{what} {p}: cannot create it ({err})") from None
        return p
    check_credentials(p, what)
    probe = p / f".write-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except Exception as err:  # fsspec backends raise many kinds of errors
        raise StorageError(f"{what} {p}: cannot write there: {explain(err, p)}") from None
    return p


def check_readable(path: PathLike, what: str = "path") -> epath.Path:
    """Fail fast, naming the URL, when ``path`` does not exist or cannot be listed/read."""
    p = as_path(path)
    if is_url(p):
        check_credentials(p, what)
    try:
        found = p.exists()
    except Exception as err:
        raise StorageError(f"{what} {p}: cannot read it: {explain(err, p)}") from None
    if not found:
        raise FileNotFoundError(f"{what} {p}: does not exist")
    return p


def check_credentials(path: PathLike, what: str = "path") -> None:
    """For ``gs://`` outside an emulator: Google credentials must be findable, else fail now.

    Without this, gcsfs would fall back to anonymous access and fail later, deep inside a write,
    with a less helpful message.
    """
    text = os.fspath(path)
    if not text.startswith("gs://") or os.environ.get("STORAGE_EMULATOR_HOST"):
        return
    try:
        import google.auth  # gs:// only (installed with gcsfs)
        from google.auth.exceptions import DefaultCredentialsError
    except ImportError:
        raise StorageError(f"{what} {text}: gs:// needs gcsfs (pip install gcsfs)") from None
    try:
        google.auth.default()
    except DefaultCredentialsError as err:
        raise StorageError(
            f"{what} {text}: no Google Cloud credentials found ({err}). On a TPU/GCE VM the "
            "VM's service account is used; elsewhere run `gcloud auth application-default "
            "login` or set GOOGLE_APPLICATION_CREDENTIALS to a key file."
        ) from None


def explain(err: Exception, path: PathLike) -> str:
    """A short reason for a storage error, naming the bucket."""
    text = f"{type(err).__name__}: {err}"
    if not is_url(path):
        return text
    bucket = os.fspath(path).split("://", 1)[1].split("/", 1)[0]
    low = text.lower()
    missing = isinstance(err, FileNotFoundError) or "404" in text or "not found" in low
    if missing or "nosuchbucket" in low:
        return f"bucket {bucket!r} does not exist ({text})"
    if "401" in text or "403" in text or "forbidden" in low or "unauthori" in low:
        return f"access to bucket {bucket!r} denied; check credentials ({text})"
    return text
