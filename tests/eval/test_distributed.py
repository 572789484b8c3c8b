"""Sharded and multi-process evaluation: per-item results on 8 devices (data 2 x fsdp 2 x tensor 2) and on two
processes x 4 devices over loopback (jax.distributed on 127.0.0.1, through the ``jaxtune eval`` command) equal the
single-device run, for the doit, ceval and cmmlu suites; where the evaluation ran is recorded; layouts the model
cannot take are refused with the layout error training gives."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import pytest

from jaxtune.cli import main as jaxtune_main
from jaxtune.config.loading import load_config
from jaxtune.config.schema import EvalConfig, MeshConfig
from jaxtune.eval.distributed import default_compute_dtype, eval_mesh_config, mesh_record
from jaxtune.eval.runner import evaluate
from jaxtune.sharding import LayoutError, build_mesh

from .test_runner import data_dir  # noqa: F401  (the suites' fixture data folder)

WORKER = Path(__file__).parents[1] / "cli_worker.py"
TIMEOUT_S = 300
SUITES = ("doit", "ceval", "cmmlu")
SETTINGS = dict(max_new_tokens=6, batch_size=16, num_shots=2)
STEMS = ("doit-test", "ceval-2-shot", "cmmlu-2-shot")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_same(a: Any, b: Any, where: str) -> None:
    """Equal JSON values, floats within float tolerance (sharded reductions sum in another order)."""
    if isinstance(a, float) or isinstance(b, float):
        assert a is not None and b is not None and math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-4), (where, a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, a, b)
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (where, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def _read(out: Path, stem: str) -> tuple[dict, list[dict]]:
    summary = json.loads((out / f"{stem}.summary.json").read_text(encoding="utf-8"))
    items = [json.loads(line) for line in (out / f"{stem}.items.jsonl").read_text(encoding="utf-8").splitlines()]
    return summary, items


def _assert_results_equal(reference: Path, other: Path) -> None:
    for stem in STEMS:
        (ref_summary, ref_items), (summary, items) = _read(reference, stem), _read(other, stem)
        assert len(items) == len(ref_items) > 0, stem
        _assert_same(ref_items, items, stem)  # replies, parsed answers, correctness, perplexities, letter logits
        _assert_same(ref_summary["abilities"], summary["abilities"], f"{stem} abilities")


def test_sharded_and_two_process_evaluations_equal_the_single_device_run(jaxtune_checkpoint, data_dir, tmp_path):
    if jax.device_count() != 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets XLA_FLAGS for 8 CPU devices)")
    # The two processes start first and run while this process evaluates the same checkpoint itself.
    port = _free_port()
    outs = [tmp_path / f"process-{i}" for i in range(2)]
    logs = [tmp_path / f"process-{i}.log" for i in range(2)]
    procs = []
    for i in range(2):
        args = [
            str(jaxtune_checkpoint),
            "--suite",
            ",".join(SUITES),
            "--out",
            str(outs[i]),
            f"eval.data_dir={data_dir}",
            *(f"eval.{k}={v}" for k, v in SETTINGS.items()),
            f"mesh.coordinator_address=127.0.0.1:{port}",
            "mesh.num_processes=2",
            f"mesh.process_id={i}",
            # An eval.mesh section: its layout, the process settings from the top-level mesh.
            "eval.mesh.data=2",
            "eval.mesh.fsdp=2",
            "eval.mesh.tensor=2",
        ]
        with open(logs[i], "w") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(WORKER), "4", "eval", *args],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=str(WORKER.parents[1]),
                )
            )
    try:
        cfg = EvalConfig(suites=list(SUITES), data_dir=str(data_dir), **SETTINGS)
        evaluate(jaxtune_checkpoint, cfg, tmp_path / "single")
        evaluate(jaxtune_checkpoint, cfg, tmp_path / "sharded", mesh=MeshConfig(data=2, fsdp=2, tensor=2))
        codes = [p.wait(timeout=TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)

    _assert_results_equal(tmp_path / "single", tmp_path / "sharded")
    _assert_results_equal(tmp_path / "single", outs[0])
    assert not outs[1].exists(), "process 1 wrote results: each item must be written once, by process 0"
    mesh = {"data": 2, "fsdp": 2, "tensor": 2}
    for out, processes in ((tmp_path / "sharded", 1), (outs[0], 2)):
        for stem in STEMS:
            run = _read(out, stem)[0]["run"]
            assert (run["mesh"], run["device_count"], run["process_count"]) == (mesh, 8, processes)
    run = _read(tmp_path / "single", "doit-test")[0]["run"]
    assert (run["mesh"], run["device_count"], run["process_count"]) == (None, 1, 1)


def test_a_mesh_the_checkpoint_cannot_take_gets_the_layout_error(
    jaxtune_checkpoint, hf_checkpoint, data_dir, tmp_path, capsys
):
    if jax.device_count() != 8:
        pytest.skip("needs 8 devices")
    # tiny-gqa has 4 heads and 2 key/value heads: a tensor axis of 8 divides neither.
    cfg = EvalConfig(suites=["doit"], data_dir=str(data_dir), **SETTINGS)
    for checkpoint in (jaxtune_checkpoint, hf_checkpoint):
        with pytest.raises(
            LayoutError,
            match=r"model.num_heads = 4 \(dimension 'heads' of parameter layers\.\w+, .*"
            r"cannot be split over mesh axis 'tensor' \(8\)",
        ):
            evaluate(checkpoint, cfg, mesh=MeshConfig(fsdp=1, tensor=8))
    # A batch that does not split over the data-parallel devices is refused before the model is loaded.
    with pytest.raises(
        LayoutError,
        match=r"eval.batch_size=6 is not a positive multiple of the data-parallel size 4 "
        r"\(mesh.data=2 x mesh.fsdp=2",
    ):
        evaluate(
            jaxtune_checkpoint,
            EvalConfig(suites=["doit"], data_dir=str(data_dir), batch_size=6),
            mesh=MeshConfig(data=2, fsdp=2, tensor=2),
        )
    # The command line takes mesh.* overrides (they were once ignored) and reports the same error.
    code = jaxtune_main(
        [
            "eval",
            str(jaxtune_checkpoint),
            "--suite",
            "doit",
            "--out",
            str(tmp_path / "out"),
            f"eval.data_dir={data_dir}",
            "mesh.fsdp=1",
            "mesh.tensor=8",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "jaxtune eval: error:" in err and "model.num_kv_heads (num_heads when unset) = 2" in err
    assert not (tmp_path / "out").exists()


def test_eval_mesh_section_and_defaults(tmp_path):
    cfg = load_config(None, ["mesh.coordinator_address=10.0.0.1:1234", "mesh.num_processes=4", "mesh.fsdp=8"])
    assert eval_mesh_config(cfg) is cfg.mesh
    cfg = load_config(
        None,
        [
            "mesh.coordinator_address=10.0.0.1:1234",
            "mesh.num_processes=4",
            "mesh.process_id=3",
            "eval.mesh.tensor=2",
            "eval.mesh.process_id=1",
        ],
    )
    chosen = eval_mesh_config(cfg)
    assert (chosen.data, chosen.fsdp, chosen.tensor) == (1, -1, 2)
    assert (chosen.coordinator_address, chosen.num_processes, chosen.process_id) == ("10.0.0.1:1234", 4, 1)
    assert default_compute_dtype(None) == ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    assert default_compute_dtype("bfloat16") == "bfloat16"
    if jax.device_count() == 8:
        record = mesh_record(build_mesh(MeshConfig(data=2, fsdp=-1, tensor=2)))
        assert record == {"mesh": {"data": 2, "fsdp": 2, "tensor": 2}, "device_count": 8, "process_count": 1}
