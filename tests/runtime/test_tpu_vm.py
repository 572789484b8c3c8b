"""Cloud TPU VM detection (jaxtune/runtime/tpu_vm.py) and the start-up decision of
:func:`jaxtune.sharding.initialize_distributed` on it: env variables, and a metadata server on 127.0.0.1 that JAX's
own cluster code would read too (``GCE_METADATA_IP``)."""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest

import jaxtune.runtime.tpu_vm as tpu_vm
from jaxtune.config.schema import MeshConfig
from jaxtune.runtime.tpu_vm import cloud_tpu_slice, metadata_attribute
from jaxtune.sharding import initialize_distributed


class _Metadata(http.server.BaseHTTPRequestHandler):
    attributes: dict[str, str] = {}
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).requests.append(self.path)
        key = self.path.rsplit("/", 1)[-1]
        if self.headers.get("Metadata-Flavor") != "Google" or key not in self.attributes:
            self.send_response(404)
            self.end_headers()
            return
        body = self.attributes[key].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def metadata(monkeypatch):
    """A GCE metadata server on 127.0.0.1 (its ``attributes`` are served), on a Cloud TPU VM as JAX tells one:
    JAX_FORCE_TPU_INIT (this machine has no TPU chip), TPU_SKIP_MDS_QUERY unset (JAX sets it on a chip-less host)."""
    handler = type("Handler", (_Metadata,), {"attributes": {}, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for name in ("TPU_SKIP_MDS_QUERY", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES", "JAX_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    for name in ("MEGASCALE_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JAX_FORCE_TPU_INIT", "1")
    monkeypatch.setenv("GCE_METADATA_IP", f"127.0.0.1:{server.server_address[1]}")
    yield handler
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "kind, hosts, spans",
    [("v5p-16", 2, True), ("v5p-8", 1, False), ("v5litepod-16", 4, True), ("v6e-8", 1, False), ("v9z-64", None, True)],
)
def test_the_slice_and_its_hosts_come_from_the_metadata_servers_accelerator_type(metadata, kind, hosts, spans):
    metadata.attributes["accelerator-type"] = kind
    tpu = cloud_tpu_slice()
    assert (tpu.accelerator_type, tpu.hosts, tpu.may_span_hosts, tpu.source) == (kind, hosts, spans, "metadata")
    assert metadata.requests == ["/computeMetadata/v1/instance/attributes/accelerator-type"]


def test_gkes_variable_wins_and_no_metadata_is_asked(metadata, monkeypatch):
    monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v4-32")
    tpu = cloud_tpu_slice()
    assert (tpu.hosts, tpu.may_span_hosts, tpu.source) == (4, True, "TPU_ACCELERATOR_TYPE")
    assert metadata.requests == []


def test_not_a_tpu_vm_asks_nothing(metadata, monkeypatch):
    monkeypatch.setenv("TPU_SKIP_MDS_QUERY", "1")  # what JAX sets on a host without TPU chips
    assert cloud_tpu_slice() is None
    monkeypatch.delenv("TPU_SKIP_MDS_QUERY")
    monkeypatch.delenv("JAX_FORCE_TPU_INIT")  # and this machine has no TPU chip on its PCI bus
    assert cloud_tpu_slice() is None
    assert metadata.requests == []


def test_an_unreachable_or_silent_metadata_server_costs_seconds_not_a_hang(metadata, monkeypatch):
    monkeypatch.setattr(tpu_vm, "METADATA_TIMEOUT_S", 0.3)
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        monkeypatch.setenv("GCE_METADATA_IP", f"127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        tpu = cloud_tpu_slice()
        assert time.monotonic() - started < 0.3 * tpu_vm.METADATA_TRIES + 2
    assert tpu.accelerator_type == "" and not tpu.may_span_hosts
    assert "no accelerator-type from the metadata server" in tpu.describe()
    assert metadata_attribute("accelerator-type") is None  # the port is closed now: refused at once


def test_a_single_host_tpu_vm_starts_as_one_process(metadata, capsys):
    metadata.attributes["accelerator-type"] = "v5p-8"
    assert initialize_distributed(MeshConfig()) is False  # one host: jax.distributed is not started
    metadata.attributes.clear()  # a server that knows no type: one host, said on stderr
    assert initialize_distributed(MeshConfig()) is False
    assert "running as a single host" in capsys.readouterr().err
