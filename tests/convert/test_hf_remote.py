"""``jaxtune import-hf gs://...`` (jaxtune/convert/hf.py through jaxtune/data/remote.py): a Hugging Face folder in a
bucket (the GCS emulator, tests/gcs_emulator.py) imports exactly as the same folder on disk, fetched once per host.
gs:// is reached from a child process (gcsfs reads the emulator's settings when first imported)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
from gcs_emulator import gcs  # noqa: F401  (the fixture)

from jaxtune.checkpoint.params import load_params
from jaxtune.convert.hf import import_hf

REPO = Path(__file__).resolve().parents[2]


def test_import_hf_reads_a_bucket_folder_through_the_host_cache(gcs, untied_dir, tmp_path):
    _, hf_dir = untied_dir
    gcs.make_bucket("models")
    gcs.upload_tree(hf_dir, "models", "llama")
    cache = tmp_path / "cache"
    env = {**os.environ, **gcs.env, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), "JAXTUNE_CACHE_DIR": str(cache)}
    for out in ("from-bucket", "again"):
        proc = subprocess.run(
            [sys.executable, "-m", "jaxtune.cli", "import-hf", "gs://models/llama", str(tmp_path / out)],
            env=env,
            cwd=str(REPO),
            text=True,
            capture_output=True,
            timeout=180,
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        if out == "from-bucket":
            fetched = {p.name: p.stat().st_ino for p in cache.iterdir()}
    assert {p.name: p.stat().st_ino for p in cache.iterdir()} == fetched and len(fetched) == 1  # no second fetch

    want_cfg = import_hf(hf_dir, tmp_path / "from-disk")
    got_cfg, got = load_params(tmp_path / "from-bucket")
    _, want = load_params(tmp_path / "from-disk")
    assert got_cfg == want_cfg
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
