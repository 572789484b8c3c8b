"""Whether this process runs on a Cloud TPU VM whose slice spans several hosts, found the way JAX's own cluster
detection finds it (``jax/_src/clusters/cloud_tpu_cluster.py``), without touching the backend.

A plain Cloud TPU VM (what ``gcp/tpu.sh create`` makes) sets no cluster variables: JAX learns its peers from the
GCE metadata server. The decision, in order:

1. ``TPU_SKIP_MDS_QUERY`` set: not a Cloud TPU VM (``import jax`` sets it when no TPU chip is on the PCI bus);
2. a TPU VM is what ``import jax`` found one to be (``jax._src.cloud_tpu_init.running_in_cloud_tpu_vm``: libtpu
   installed and TPU chips on the PCI bus; the flag JAX's own ``GceTpuCluster`` reads, so the two never disagree),
   or ``JAX_FORCE_TPU_INIT`` is set;
3. the accelerator type is ``TPU_ACCELERATOR_TYPE`` (GKE sets it) or the metadata key
   ``instance/attributes/accelerator-type`` (``v5p-16``), read from ``GCE_METADATA_IP`` (default
   ``metadata.google.internal``) with short timeouts: an unreachable server costs at most
   :data:`METADATA_TIMEOUT_S` x :data:`METADATA_TRIES`, never a hang;
4. its hosts come from :mod:`jaxtune.hardware` (``v5p-16``: 2 hosts of 4 chips); a type the table does not know
   counts as a slice that may span hosts (initialising on one host is harmless, missing it on several is not);
   no answer from the metadata server counts as one host (JAX's initialisation would wait minutes on the same
   server), and the start-up line says so.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Optional

from jaxtune.hardware import AcceleratorError, parse_accelerator

METADATA_TIMEOUT_S = 2.0
METADATA_TRIES = 2
ACCELERATOR_TYPE_KEY = "accelerator-type"


@dataclass(frozen=True)
class TpuSlice:
    """The Cloud TPU slice this VM belongs to."""

    accelerator_type: str
    """``v5p-16``, ``v5litepod-8``, ... (empty when the metadata server did not answer)."""
    hosts: Optional[int]
    """Hosts of the slice; None when unknown (an accelerator type the hardware table does not list)."""
    source: str
    """Where the type came from: ``TPU_ACCELERATOR_TYPE`` or ``metadata``."""

    @property
    def may_span_hosts(self) -> bool:
        """True for several hosts or an unknown type; False for one host, or when the metadata server did not
        answer (JAX's own initialisation would then wait minutes on it: run as one host, and say so)."""
        return bool(self.accelerator_type) and (self.hosts is None or self.hosts > 1)

    def describe(self) -> str:
        hosts = "hosts unknown" if self.hosts is None else f"{self.hosts} host{'s' if self.hosts > 1 else ''}"
        return f"Cloud TPU slice {self.accelerator_type or '(type unknown)'} ({hosts}; from {self.source})"


def on_cloud_tpu_vm() -> bool:
    """Whether this machine looks like a Cloud TPU VM to JAX (steps 1 and 2 of the module docstring)."""
    if os.environ.get("TPU_SKIP_MDS_QUERY") is not None:
        return False
    if "JAX_FORCE_TPU_INIT" in os.environ:
        return True
    from jax._src import cloud_tpu_init  # set when jax was imported; the backend is not started

    return bool(cloud_tpu_init.running_in_cloud_tpu_vm)


def metadata_attribute(key: str) -> Optional[str]:
    """An ``instance/attributes`` value of the GCE metadata server, or None when it is absent or unreachable."""
    host = os.environ.get("GCE_METADATA_IP", "metadata.google.internal")
    request = urllib.request.Request(
        f"http://{host}/computeMetadata/v1/instance/attributes/{key}", headers={"Metadata-Flavor": "Google"}
    )
    for _ in range(METADATA_TRIES):
        try:
            with urllib.request.urlopen(request, timeout=METADATA_TIMEOUT_S) as response:
                return response.read().decode("utf-8").strip()
        except urllib.error.HTTPError as e:
            if e.code == 404:  # the key does not exist: asking again cannot help
                return None
        except (OSError, ValueError):  # refused, timed out, no such host
            pass
    return None


def cloud_tpu_slice() -> Optional[TpuSlice]:
    """The slice of this Cloud TPU VM, or None when this is not one (see the module docstring)."""
    if not on_cloud_tpu_vm():
        return None
    kind, source = os.environ.get("TPU_ACCELERATOR_TYPE", ""), "TPU_ACCELERATOR_TYPE"
    if not kind:
        kind, source = metadata_attribute(ACCELERATOR_TYPE_KEY) or "", "metadata"
    try:
        hosts: Optional[int] = parse_accelerator(kind).hosts if kind else None
    except AcceleratorError:
        hosts = None
    return TpuSlice(kind, hosts, source if kind else "no accelerator-type from the metadata server")
