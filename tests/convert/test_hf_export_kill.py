"""``jaxtune export-hf`` killed half way leaves nothing that looks like an export: the folder is written as a
hidden ``.NAME.partial-*`` sibling and renamed last (jaxtune/paths.py: staged_folder)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from flax import nnx
from tiny_demo_run import TINY_DEMO_MODEL

from jaxtune.checkpoint.params import save_params
from jaxtune.config.loading import model_config_from_dict
from jaxtune.demo import DEMO_TOKENIZER
from jaxtune.models.llama import Llama

REPO = Path(__file__).resolve().parents[2]


def test_a_kill_during_export_leaves_no_complete_looking_folder(tmp_path):
    cfg = model_config_from_dict(TINY_DEMO_MODEL)
    ckpt = save_params(
        tmp_path / "ckpt", nnx.state(Llama(cfg, nnx.Rngs(0)), nnx.Param), cfg, DEMO_TOKENIZER / "tokenizer.model"
    )
    out = tmp_path / "hf"
    # SIGKILL after the first tensor is written: what a pod's kill does at any point of the export.
    code = textwrap.dedent(
        f"""
        import os, signal
        from jaxtune.convert import safetensors_io
        from jaxtune.cli import main
        write = safetensors_io.SafetensorsWriter.write
        def write_then_die(self, *args):
            write(self, *args)
            os.kill(os.getpid(), signal.SIGKILL)
        safetensors_io.SafetensorsWriter.write = write_then_die
        main(["export-hf", {str(ckpt)!r}, {str(out)!r}])
        """
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(REPO), timeout=180, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert not out.exists()  # nothing named like the export
    assert [p.name.startswith(".hf.partial-") for p in tmp_path.iterdir() if p.name != "ckpt"] == [True]

    # A run to the end renames the folder into place.
    env_run = subprocess.run(
        [sys.executable, "-m", "jaxtune.cli", "export-hf", str(ckpt), str(out)], env=env, cwd=str(REPO), timeout=180
    )
    assert env_run.returncode == 0
    assert {"config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
