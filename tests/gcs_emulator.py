"""A Google Cloud Storage emulator (the ``gcp-storage-emulator`` package, with the one header tensorstore needs
added: see gcs_emulator_server.py) on 127.0.0.1 for the gs:// tests, and
plain-HTTP access to its objects (JSON API), so the tests check what landed in the bucket without going through
the code under test.

The ``gcs`` fixture starts one in-memory emulator per test module; ``env`` is what a child process needs to reach it
with every storage stack jaxtune uses (see jaxtune/paths.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

START_TIMEOUT_S = 30


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GcsEmulator:
    """A running emulator: ``url``, ``env`` for child processes, and object access by HTTP."""

    def __init__(self, log_path: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            import gcp_storage_emulator  # noqa: F401
        except ImportError:
            pytest.skip("gcp-storage-emulator is not installed (pip install -e .[test])")
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("gcs_emulator_server.py")), str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b?project=test", timeout=2).read()
                break
            except (urllib.error.URLError, ConnectionError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the GCS emulator did not start; see {log_path}")
                time.sleep(0.1)

    @property
    def env(self) -> dict[str, str]:
        """The variables (to add to a child's environment) that point every storage stack at the emulator."""
        return {
            "STORAGE_EMULATOR_HOST": self.url,  # gcsfs and google-cloud-storage (tensorboardX)
            "FSSPEC_GS_TOKEN": "anon",  # gcsfs: no credentials
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # gcsfs: no gRPC bucket-layout probe (60 s timeout)
            "TENSORSTORE_GCS_HTTP_URL": self.url,  # Orbax's arrays
            "GOOGLE_CLOUD_PROJECT": "test",
            # No metadata server: every credential lookup fails at once instead of timing out.
            "GCE_METADATA_HOST": "127.0.0.1:1",
            "GCE_METADATA_IP": "127.0.0.1:1",
            "GCE_METADATA_ROOT": "127.0.0.1:1",
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()

    def _request(self, method: str, path: str, data: bytes | None = None) -> bytes:
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/octet-stream")
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read()

    def make_bucket(self, name: str) -> None:
        req = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test", method="POST", data=json.dumps({"name": name}).encode()
        )
        req.add_header("Content-Type", "application/json")
        urllib.request.urlopen(req, timeout=30).read()

    def names(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object name under ``prefix``, sorted."""
        out, token = [], None
        while True:
            query = {"prefix": prefix, **({"pageToken": token} if token else {})}
            page = json.loads(self._request("GET", f"/storage/v1/b/{bucket}/o?{urllib.parse.urlencode(query)}"))
            out += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken")
            if not token:
                return sorted(out)

    def read(self, bucket: str, name: str) -> bytes:
        return self._request("GET", f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media")

    def upload(self, bucket: str, name: str, data: bytes) -> None:
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        self._request("POST", f"/upload/storage/v1/b/{bucket}/o?{query}", data)

    def upload_tree(self, local: Path, bucket: str, prefix: str) -> int:
        files = [p for p in sorted(local.rglob("*")) if p.is_file()]
        for p in files:
            self.upload(bucket, f"{prefix}/{p.relative_to(local).as_posix()}", p.read_bytes())
        return len(files)

    def download_tree(self, bucket: str, prefix: str, local: Path) -> Path:
        """Copy every object under ``prefix/`` into ``local`` (e.g. an Orbax checkpoint, to read it directly)."""
        for name in self.names(bucket, prefix.rstrip("/") + "/"):
            dst = local / name[len(prefix.rstrip("/")) + 1 :]
            if name.endswith("/"):  # a folder placeholder object
                dst.mkdir(parents=True, exist_ok=True)
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(self.read(bucket, name))
        return local


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    emulator = GcsEmulator(tmp_path_factory.mktemp("gcs") / "emulator.log")
    try:
        yield emulator
    finally:
        emulator.stop()


REPO = Path(__file__).resolve().parents[1]


def run_python(gcs, code: str, *, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` (dedented) in a fresh Python of this checkout, on the CPU, pointed at the emulator ``gcs``
    (plus ``env``); its result, output captured."""
    full = {**os.environ, **gcs.env, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=full, cwd=str(REPO), text=True, capture_output=True,
        timeout=timeout,
    )  # fmt: skip
