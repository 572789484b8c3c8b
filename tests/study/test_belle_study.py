"""The BELLE study in miniature: the paper's recipe (configs/belle-bloomz-7b1-mt.yaml) with a tiny model, trained on
generated BELLE-format records (plus an Alpaca-format mix) at two nested volumes by `jaxtune sweep`, each run's
replies judged three times by a real OpenAI-compatible judge on 127.0.0.1, and the study's figure drawn."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from compile_level import xla_flags
from eval.judge_server import JudgeServer, judge_like  # tests/ is on sys.path (rootdir conftest)

from jaxtune.cli import main
from jaxtune.config.loading import load_config
from jaxtune.data.mixtures import read_manifest
from jaxtune.eval.suites.belle import MODEL_CARD_DECODING
from jaxtune.results import read_summary

REPO = Path(__file__).resolve().parents[2]
DEMO_TOKENIZER = REPO / "jaxtune" / "demo" / "tokenizer"
RECIPE = REPO / "configs" / "belle-bloomz-7b1-mt.yaml"
TIMEOUT_S = 300

MODELS = {
    # vocab_size: the demo SentencePiece vocabulary's 1000 pieces (the BELLE template adds no tokens).
    "tiny-llama": [
        "model.preset=tiny",
        "model.vocab_size=1000",
        "model.hidden_size=64",
        "model.num_layers=2",
        "model.num_heads=4",
        "model.intermediate_size=128",
        "model.max_position_embeddings=128",
    ],
    "tiny-bloom": ["model.preset=bloom-tiny", "model.vocab_size=1000"],
}
"""Model overrides of the miniature, by name."""
MINIATURE_MODELS = ["tiny-bloom"]
"""The models the miniature runs: the study's family, BLOOM (``tiny-llama`` runs the same study on a LLaMA; each
run takes ~30-60 s)."""

ANIMALS = {
    "老虎": "哺乳动物",
    "海豚": "哺乳动物",
    "企鹅": "鸟类",
    "麻雀": "鸟类",
    "鲨鱼": "鱼类",
    "金鱼": "鱼类",
    "蜜蜂": "昆虫",
    "蝴蝶": "昆虫",
}
VOLUMES = ("belle-16+alpaca", "belle-48+alpaca")
EVAL_ITEMS = [
    {"question": "老虎属于哪一类动物？", "std_answer": "哺乳动物", "class": "open qa"},
    {"question": "企鹅属于哪一类动物？", "std_answer": "鸟类", "class": "closed\xa0QA"},
    {"question": "蜜蜂属于哪一类动物？", "std_answer": "昆虫", "class": "classification"},
    {"question": "写一句关于大海的话。", "std_answer": "", "class": "generation"},
    {"question": "2加3等于几？", "std_answer": "5", "class": "math"},
    {"question": "写一个返回两数之和的函数。", "std_answer": "def f(a, b): return a + b", "class": "code"},
]
PROMPTS = [
    {"class": c, "prompt": f"请为{c}类回答打分。"}
    for c in ("open QA", "closed qa", "classification", "generation", "math", "code")
]


def _write_study_data(root: Path) -> dict[str, str]:
    names = list(ANIMALS)
    records = [
        {
            "instruction": f"{names[i % len(names)]}属于哪一类动物？",
            "input": "",
            "output": ANIMALS[names[i % len(names)]],
            "id": f"zh{i}",
        }
        for i in range(60)
    ]
    (root / "belle").mkdir(parents=True)
    (root / "belle" / "train.json").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )
    alpaca = [{"instruction": "Give example 3.", "input": "", "output": "Example 3."}] * 4
    (root / "alpaca_data.json").write_text(json.dumps(alpaca), encoding="utf-8")
    (root / "belle_eval").mkdir()
    for name, rows in (("eval_set.json", EVAL_ITEMS), ("eval_prompt.json", PROMPTS)):
        (root / "belle_eval" / name).write_text(
            "\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8"
        )
    return {"path": str(root / "belle" / "train.json"), "alpaca_path": str(root / "alpaca_data.json")}


def _sweep(args: list[str], env_extra: dict[str, str], log: Path) -> int:
    """`jaxtune sweep` in a child process on one CPU device, bounded in time (a JAX compilation cache shared by its
    two runs keeps it fast)."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_COORDINATOR_ADDRESS")}
    env.update(env_extra, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jaxtune.cli", "sweep", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(REPO),
        )
        try:
            return proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise


@pytest.mark.parametrize("model", MINIATURE_MODELS)
def test_belle_study_in_miniature(model: str, tmp_path: Path) -> None:
    data = _write_study_data(tmp_path / "data")
    runs = tmp_path / "runs"
    with JudgeServer(expected_key="sk-mini") as server:
        overrides = [
            *MODELS[model],
            "model.compute_dtype=float32",
            "model.remat_policy=none",
            "train.backward=autodiff",
            f"run_dir={runs}",
            f"data.path={data['path']}",
            f"data.alpaca_path={data['alpaca_path']}",
            f"data.tokenizer={DEMO_TOKENIZER}",
            "data.max_len=48",
            "data.length_buckets=[]",
            "train.global_batch_size=8",
            "optim.learning_rate=3e-3",
            "checkpoint.init_from=null",
            "checkpoint.save_every=null",
            "checkpoint.async_save=false",
            f"eval.data_dir={tmp_path / 'data'}",
            "eval.batch_size=8",
            "eval.max_new_tokens=8",
            "eval.max_prompt_len=48",
            f"eval.judge_base_url={server.url}",
            "eval.judge_model=judge-mini",
            "eval.judge_api_key_env=MINI_JUDGE_KEY",
        ]
        cfg = load_config(RECIPE, overrides)
        assert (cfg.train.epochs, cfg.optim.schedule, cfg.data.template) == (2, "constant", "belle")  # the paper's
        env = {
            "MINI_JUDGE_KEY": "sk-mini",
            "XLA_FLAGS": xla_flags(1),
            "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        }
        args = [str(RECIPE), "--selections", ",".join(VOLUMES), *overrides, "eval.judge_retries=1"]
        # The judge is down for one item during the first sweep: every cell is trained, evaluated and reported, the
        # sweep exits 75 naming the items, and no evaluation counts as done; the next sweep asks only for them.
        server.down.add("企鹅属于")
        rc = _sweep(args, env, tmp_path / "sweep-judge-down.log")
        log = (tmp_path / "sweep-judge-down.log").read_text(encoding="utf-8")
        assert rc == 75, log[-3000:]
        last = log.strip().splitlines()[-1]
        assert last.startswith("jaxtune sweep: error: the judge gave up on items of 2 evaluations ("), log[-3000:]
        assert all(f"{runs / v} epoch 2: 1 in belle-eval_set" in last for v in VOLUMES), last
        assert not any((runs / v / "eval" / "epoch-2" / "evaluated.json").exists() for v in VOLUMES)
        server.down.clear()
        asked = len(server.requests)
        rc = _sweep(args, env, tmp_path / "sweep.log")
        judged = len(server.requests)
    log = (tmp_path / "sweep.log").read_text(encoding="utf-8")
    assert rc == 0, log[-3000:]
    assert judged - asked == 2 * 3  # the one item's three judgements, in each of the two runs
    assert "belle-eval_set.study.png" in log  # the sweep's report
    assert judged >= 2 * len(EVAL_ITEMS) * 3  # every reply judged three times (re-asks come on top)
    eval_dirs = [runs / v / "eval" / "epoch-2" for v in VOLUMES]

    manifests = [read_manifest(runs / v / "manifest.jsonl") for v in VOLUMES]
    assert [len(m) for m in manifests] == [16 + 4, 48 + 4]
    small, large = ({(e["id"], e["line"]) for e in m if e["ability"] == "belle"} for m in manifests)
    assert small < large  # nested volumes

    for volume, eval_dir in zip((16, 48), eval_dirs):
        summary = read_summary(eval_dir / "belle-eval_set.summary.json")
        assert (summary.run.data_source, summary.run.data_volume, summary.run.epoch) == ("belle+alpaca", volume, 2)
        # The recipe's decoding (the model cards' sampling), with fewer new tokens.
        assert summary.details["decoding"] == {"name": "custom", **MODEL_CARD_DECODING, "max_new_tokens": 8, "seed": 0}
        assert summary.details["judge"]["model"] == "judge-mini"
        items = [json.loads(line) for line in (eval_dir / "belle-eval_set.items.jsonl").open(encoding="utf-8")]
        assert len(items) == len(EVAL_ITEMS)
        for item, spec in zip(items, EVAL_ITEMS):
            # The judge's rule, applied here to the reply the model gave: the mean of three equal judgements.
            want = float(
                judge_like(item["judge_message"])
                .split("得分")[1]
                .lstrip(":： ")
                .split("/")[0]
                .split("分")[0]
                .split()[0]
            )
            assert item["judgements"] == [want] * 3 and item["parsed"] == pytest.approx(want)
            assert ("标准回答" in item["judge_message"]) == bool(spec["std_answer"])
        scores = {a.name: a.score for a in summary.abilities}
        assert set(scores) == {"open qa", "closed qa", "classification", "generation", "math", "code"}
        assert summary.details["overall_without_math_code"] == pytest.approx(
            sum(v for k, v in scores.items() if k not in ("math", "code")) / 4
        )

    # `jaxtune report` over the evaluation folders draws the same figure.
    report = tmp_path / "report"
    assert main(["report", *map(str, eval_dirs), "--out", str(report)]) == 0
    assert (report / "belle-eval_set.study.csv").read_bytes() == (
        runs / "report" / "belle-eval_set.study.csv"
    ).read_bytes()
    with (report / "belle-eval_set.study.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    ours = {(r["use_case"], int(r["volume"])) for r in rows if r["panel"].startswith("this evaluation")}
    assert {("Overall", 16), ("Overall", 48), ("Overall w/o math & code", 48), ("Open QA", 16)} <= ours
    assert any(r["panel"].startswith("paper") for r in rows)
    assert (report / "belle-eval_set.study.png").stat().st_size > 10_000
