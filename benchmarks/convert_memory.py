"""Peak host memory of ``import-hf`` on a random ~1B-parameter LLaMA against the checkpoint's size in bytes.

The random Hugging Face folder is written tensor by tensor (sharded safetensors like a real download, bfloat16 by
default) without building the model in memory; then ``import_hf`` runs in a fresh child process that reports its
own peak RSS (``VmHWM`` of /proc/self/status: the high-water mark of that process's memory alone, which a parent's
pages inherited through fork cannot inflate). The baseline (the same child importing jaxtune, JAX and Orbax without
converting) is measured the same way and printed beside it. Target: peak RSS <= 1.3 x the output's size.

    .venv/bin/python benchmarks/convert_memory.py                     # ~1B params, bfloat16, shards of 1 GB
    .venv/bin/python benchmarks/convert_memory.py --dtype float32 --keep /tmp/hf-1b
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_common import add_model_args, model_config

PEAK_RSS = """
def peak_rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
"""
CHILD_IMPORT = (
    PEAK_RSS
    + """
import json, sys, time
from jaxtune.convert.hf import import_hf
start = time.perf_counter()
import_hf(sys.argv[1], sys.argv[2], param_dtype=sys.argv[3])
print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss": peak_rss()}))
"""
)
CHILD_BASELINE = (
    PEAK_RSS
    + """
import json
import jaxtune.convert.hf
print(json.dumps({"peak_rss": peak_rss()}))
"""
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(p, vocab=32000, hidden=2048, layers=16, heads=16, mlp=5632)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--shard-size", default="1GB", help="max size of the input safetensors shards")
    p.add_argument("--workdir", default=None, help="where to write the folders (default: a temporary directory)")
    p.add_argument("--keep", default=None, help="keep the random Hugging Face folder here")
    return p.parse_args()


def write_random_hf_folder(out: Path, args: argparse.Namespace) -> int:
    """A random LlamaForCausalLM folder written one tensor at a time; returns its tensor bytes."""
    from jaxtune.convert.hf import parse_size, plan_shards
    from jaxtune.convert.hf_config import write_hf_config
    from jaxtune.convert.hf_families import FAMILIES
    from jaxtune.convert.safetensors_io import PlannedTensor, SafetensorsWriter
    from jaxtune.models.dtypes import DTYPES

    cfg = model_config(args)
    dtype = np.dtype(DTYPES[args.dtype])
    out.mkdir(parents=True)
    planned = [PlannedTensor(n, dtype, s) for n, s in FAMILIES[cfg.family].hf_tensor_shapes(cfg).items()]
    shards = plan_shards(planned, parse_size(args.shard_size))
    rng = np.random.default_rng(0)
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        with SafetensorsWriter(out / name, shard) as writer:
            for t in shard:
                writer.write(t.name, (0.02 * rng.standard_normal(t.shape, np.float32)).astype(dtype))
                weight_map[t.name] = name
    total = sum(t.nbytes for t in planned)
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    write_hf_config(cfg, out, args.dtype)
    return total


def run_child(code: str, *argv: str) -> dict:
    """Run ``code`` in a fresh Python and return the JSON object it prints last."""
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"child process failed with status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="jaxtune-convert-", dir=args.workdir))
    try:
        hf_dir = Path(args.keep) if args.keep else work / "hf"
        start = time.perf_counter()
        if not (hf_dir / "config.json").is_file():
            size = write_random_hf_folder(hf_dir, args)
            print(f"wrote random Hugging Face folder {hf_dir} in {time.perf_counter() - start:.0f} s")
        else:
            size = json.loads((hf_dir / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
        baseline = run_child(CHILD_BASELINE)["peak_rss"]
        result = run_child(CHILD_IMPORT, str(hf_dir), str(work / "ckpt"), args.dtype)
        peak, seconds = result["peak_rss"], result["seconds"]
        ckpt_bytes = sum(f.stat().st_size for f in (work / "ckpt").rglob("*") if f.is_file())
        params = (
            size // np.dtype({"bfloat16": np.uint16, "float16": np.float16, "float32": np.float32}[args.dtype]).itemsize
        )
        gib = 2**30
        print(
            f"model: hidden {args.hidden}, {args.layers} layers, mlp {args.mlp}, vocab {args.vocab}: "
            f"{params / 1e9:.2f}B params, {args.dtype}, {size / gib:.2f} GiB of tensors"
        )
        print(f"import-hf: {seconds:.0f} s, checkpoint on disk {ckpt_bytes / gib:.2f} GiB")
        print(f"peak RSS of import-hf:        {peak / gib:.2f} GiB")
        print(f"  of which baseline (imports): {baseline / gib:.2f} GiB")
        ratio = peak / size
        print(
            f"peak RSS / model size: {ratio:.2f} (target <= 1.3: {'met' if ratio <= 1.3 else 'NOT met'}); "
            f"excluding the baseline: {(peak - baseline) / size:.2f}"
        )
        return 0 if ratio <= 1.3 else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
