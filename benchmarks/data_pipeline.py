"""Benchmark of the data pipeline: packed tokens/s, packing efficiency and peak RSS on prepared ArrayRecord corpora.

Corpora (written once under --work-dir, then reused):
- ``realistic-20k``: 20,000 dialogues of realistic length (user turns of 20-400 characters, replies log-normal around
  300 characters), Chinese text taken from CMMLU questions and options (../shared/data/cmmlu).
- ``small-20k`` and ``small-2m``: 20,000 and 2,000,000 small records (tens of characters per turn) for the memory
  comparison: the 2M corpus must not be loaded into memory.

Each measurement runs in a fresh process: prepare (if needed) -> build_train_pipeline (first pass: tokenize every
record once) -> iterate batches of ``max_len`` 2048. Figures printed:
- first-pass rate (records/s, tokens/s) and time;
- packed tokens/s while iterating (non-padding tokens of the batches / wall time), whole pipeline included
  (ArrayRecord reads, JSON decoding, SentencePiece, packing into rows, batching);
- packing efficiency (non-padding share of the epoch's token slots);
- peak RSS of the process (ru_maxrss), and the RSS difference between the 2M and the 20k corpus.
Targets: >= 150k tokens/s, packing efficiency >= 95% at max_len 2048, RSS difference < 200 MB.

Usage: python benchmarks/data_pipeline.py [--work-dir /tmp/jaxtune_bench] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jaxtune.data.mixtures import STUDY_ABILITIES
from jaxtune.demo.records import doit_record, write_jsonl

SHARED = REPO / ".." / "shared" / "data"
TOKENIZER = SHARED / "tokenizers" / "chinese-llama-plus"
CMMLU = SHARED / "cmmlu"


def _sentences() -> list[str]:
    """Real Chinese sentences: CMMLU questions and options."""
    out = []
    for split in ("test", "dev"):
        for path in sorted((CMMLU / split).glob("*.csv")):
            with open(path, encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    out.append(row["Question"])
                    out.extend(row[k] for k in "ABCD" if len(row[k]) > 3)
    if not out:
        raise SystemExit(f"no CMMLU text at {CMMLU}: the benchmark needs ../shared/data")
    return out


def _text(rng: random.Random, sentences: list[str], chars: int) -> str:
    parts, n = [], 0
    while n < chars:
        s = rng.choice(sentences)
        parts.append(s)
        n += len(s)
    return "".join(parts)[:chars]


def _record(rng: random.Random, sentences: list[str], kind: str, i: int) -> dict:
    if kind == "realistic":
        user = _text(rng, sentences, rng.randint(20, 400))
        reply = _text(rng, sentences, max(1, min(3000, int(rng.lognormvariate(5.5, 0.8)))))
    else:
        user = _text(rng, sentences, rng.randint(10, 60))
        reply = _text(rng, sentences, rng.randint(5, 80))
    return doit_record(STUDY_ABILITIES[i % len(STUDY_ABILITIES)], user, reply, idx=i)


def write_corpus(path: Path, n: int, kind: str, seed: int = 0) -> None:
    """JSON Lines of DoIT records; ``realistic`` or ``small`` turn lengths."""
    rng = random.Random(seed)
    sentences = _sentences()
    tmp = path.with_suffix(".tmp")
    write_jsonl(tmp, (_record(rng, sentences, kind, i) for i in range(n)))
    tmp.replace(path)


def prepare_corpus(work: Path, name: str, n: int, kind: str) -> dict:
    """Runs in its own process: write the JSON Lines corpus, prepare it, report time and peak RSS."""
    from jaxtune.data.prepare import prepare_dataset

    source = work / name / "records.json"
    t = time.time()
    write_corpus(source, n, kind)
    written = time.time() - t
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.time()
    prepare_dataset(source, work / name / "prepared", "doit", overwrite=True)
    seconds = time.time() - t
    source.unlink()
    return {
        "write_s": written,
        "prepare_s": seconds,
        "records_per_s": n / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": rss_before,
    }


def ensure_prepared(work: Path, name: str, n: int, kind: str) -> Path:
    from jaxtune.data.prepare import is_prepared_dataset

    out = work / name / "prepared"
    if not is_prepared_dataset(out):
        r = _child(["--prepare", str(work), name, str(n), kind])
        print(
            f"[{name}] wrote {n} records in {r['write_s']:.1f}s; prepared the ArrayRecord dataset in "
            f"{r['prepare_s']:.1f}s ({r['records_per_s']:.0f} records/s), peak RSS of prepare "
            f"{r['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    return out


def _child(args: list[str]) -> dict:
    cmd = [sys.executable, __file__, *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(prepared: Path, batches: int, workers: int, batch_size: int) -> dict:
    """Runs in its own process: build the pipeline, iterate, report figures and peak RSS."""
    import grain

    from jaxtune.config.schema import DataConfig
    from jaxtune.data.pipeline import build_train_pipeline

    cfg = DataConfig(
        path=str(prepared), tokenizer=str(TOKENIZER), max_len=2048, packing=True, num_workers=workers, prefetch=4
    )
    t0 = time.perf_counter()
    data = build_train_pipeline(
        cfg, global_batch_size=batch_size, epochs=1, shard_options=grain.sharding.ShardOptions(0, 1)
    )
    setup = time.perf_counter() - t0
    info = data.info
    it = data.iterator
    first = next(it)  # worker start-up is not throughput
    tokens = 0
    n = 0
    t1 = time.perf_counter()
    for batch in it:
        tokens += int((batch["segment_ids"] > 0).sum())
        n += 1
        if n >= batches:
            break
    elapsed = time.perf_counter() - t1
    if hasattr(it, "close"):
        it.close()
    assert first["input_ids"].shape == (batch_size, 2048)
    return {
        "records": info.num_records,
        "first_pass_s": setup,
        "first_pass_records_per_s": info.num_records / setup,
        "first_pass_tokens_per_s": info.tokens_per_epoch / setup,
        "mean_tokens_per_example": info.tokens_per_epoch / info.num_examples,
        "batches": n,
        "tokens_per_s": tokens / elapsed,
        "packing_efficiency": info.packing_efficiency,
        "steps_per_epoch": info.steps_per_epoch,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_child(prepared: Path, batches: int, workers: int, batch_size: int) -> dict:
    return _child(
        [
            "--child",
            str(prepared),
            "--batches",
            str(batches),
            "--workers",
            str(workers),
            "--batch-size",
            str(batch_size),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="/tmp/jaxtune_bench")
    parser.add_argument("--quick", action="store_true", help="skip the 2M corpus")
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--child")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--prepare", nargs=4, metavar=("WORK", "NAME", "N", "KIND"))
    args = parser.parse_args()
    if args.prepare:
        work, name, n, kind = args.prepare
        print(json.dumps(prepare_corpus(Path(work), name, int(n), kind)))
        return
    if args.child:
        print(json.dumps(measure(Path(args.child), args.batches, args.workers, args.batch_size)))
        return
    if not (TOKENIZER / "tokenizer.model").is_file():
        raise SystemExit(f"the DoIT tokenizer is not at {TOKENIZER}")
    work = Path(args.work_dir)
    corpora = [("realistic-20k", 20_000, "realistic"), ("small-20k", 20_000, "small")]
    if not args.quick:
        corpora.append(("small-2m", 2_000_000, "small"))
    results = {}
    for name, n, kind in corpora:
        prepared = ensure_prepared(work, name, n, kind)
        for workers in (0, 2) if name in ("realistic-20k", "small-2m") else (0,):
            r = run_child(prepared, args.batches, workers, args.batch_size)
            results[(name, workers)] = r
            print(
                f"[{name}, workers={workers}] first pass {r['first_pass_s']:.1f}s "
                f"({r['first_pass_records_per_s']:.0f} records/s, {r['first_pass_tokens_per_s']:.0f} tokens/s; "
                f"{r['mean_tokens_per_example']:.0f} tokens/example) | iterate {r['tokens_per_s']:.0f} packed "
                f"tokens/s over {r['batches']} batches of {args.batch_size}x2048 | packing efficiency "
                f"{100 * r['packing_efficiency']:.2f}% | peak RSS {r['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    print("\nsummary (targets: >= 150k tokens/s, >= 95% packing at 2048, 2M-20k RSS difference < 200 MB)")
    best = max(r["tokens_per_s"] for (name, _), r in results.items() if name == "realistic-20k")
    eff = results[("realistic-20k", 0)]["packing_efficiency"]
    print(f"  packed tokens/s (realistic, best of workers 0/2): {best:,.0f}  ratio to target {best / 150e3:.2f}")
    print(f"  packing efficiency (realistic, max_len 2048): {100 * eff:.2f}%")
    if ("small-2m", 0) in results:
        diff = results[("small-2m", 0)]["peak_rss_mb"] - results[("small-20k", 0)]["peak_rss_mb"]
        print(
            f"  peak RSS small-20k {results[('small-20k', 0)]['peak_rss_mb']:.0f} MB, small-2m "
            f"{results[('small-2m', 0)]['peak_rss_mb']:.0f} MB: difference {diff:.0f} MB (target < 200)"
        )


if __name__ == "__main__":
    main()
