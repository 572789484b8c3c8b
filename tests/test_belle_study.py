"""The BELLE study in miniature: the paper's recipe (configs/belle-bloomz-7b1-mt.yaml) with a tiny model, trained on
generated BELLE-format records (plus an Alpaca-format mix) at two nested volumes by `jaxtune sweep`, each run's
replies judged three times by a real OpenAI-compatible judge on 127.0.0.1, and the study's figure drawn."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from jaxtune.config import load_config
from jaxtune.data.mixtures import read_manifest
from jaxtune.results import read_summary
from jaxtune.sweep import sweep

from eval.judge_server import JudgeServer, judge_like  # tests/ is on sys.path (rootdir conftest)

REPO = Path(__file__).resolve().parents[1]
DEMO_TOKENIZER = REPO / "jaxtune" / "demo" / "tokenizer"
RECIPE = REPO / "configs" / "belle-bloomz-7b1-mt.yaml"

MODELS = {
    # The demo SentencePiece vocabulary (1000 pieces; the BELLE template adds no tokens).
    "tiny-llama": ["model.preset=tiny", "model.vocab_size=1000", "model.hidden_size=64", "model.num_layers=2",
                   "model.num_heads=4", "model.intermediate_size=128", "model.max_position_embeddings=128"],
}
"""Model overrides of the miniature, by name (a tiny BLOOM preset slots in here)."""

ANIMALS = {"老虎": "哺乳动物", "海豚": "哺乳动物", "企鹅": "鸟类", "麻雀": "鸟类", "鲨鱼": "鱼类", "金鱼": "鱼类",
           "蜜蜂": "昆虫", "蝴蝶": "昆虫"}
VOLUMES = ("belle-16+alpaca", "belle-48+alpaca")
EVAL_ITEMS = [
    {"question": "老虎属于哪一类动物？", "std_answer": "哺乳动物", "class": "open qa"},
    {"question": "企鹅属于哪一类动物？", "std_answer": "鸟类", "class": "closed\xa0QA"},
    {"question": "蜜蜂属于哪一类动物？", "std_answer": "昆虫", "class": "classification"},
    {"question": "写一句关于大海的话。", "std_answer": "", "class": "generation"},
    {"question": "2加3等于几？", "std_answer": "5", "class": "math"},
    {"question": "写一个返回两数之和的函数。", "std_answer": "def f(a, b): return a + b", "class": "code"},
]
PROMPTS = [{"class": c, "prompt": f"请为{c}类回答打分。"} for c in
           ("open QA", "closed qa", "classification", "generation", "math", "code")]


def _write_study_data(root: Path) -> dict[str, str]:
    names = list(ANIMALS)
    records = [{"instruction": f"{names[i % len(names)]}属于哪一类动物？", "input": "",
                "output": ANIMALS[names[i % len(names)]], "id": f"zh{i}"} for i in range(60)]
    (root / "belle").mkdir(parents=True)
    (root / "belle" / "train.json").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    alpaca = [{"instruction": "Give example 3.", "input": "", "output": "Example 3."}] * 4
    (root / "alpaca_data.json").write_text(json.dumps(alpaca), encoding="utf-8")
    (root / "belle_eval").mkdir()
    for name, rows in (("eval_set.json", EVAL_ITEMS), ("eval_prompt.json", PROMPTS)):
        (root / "belle_eval" / name).write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows),
                                                encoding="utf-8")
    return {"path": str(root / "belle" / "train.json"), "alpaca_path": str(root / "alpaca_data.json")}


@pytest.mark.parametrize("model", list(MODELS))
def test_belle_study_in_miniature(model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINI_JUDGE_KEY", "sk-mini")
    data = _write_study_data(tmp_path / "data")
    with JudgeServer(expected_key="sk-mini") as server:
        cfg = load_config(RECIPE, [
            *MODELS[model], "model.compute_dtype=float32", "model.remat_policy=none",
            f"run_dir={tmp_path / 'runs'}", f"data.path={data['path']}", f"data.alpaca_path={data['alpaca_path']}",
            f"data.tokenizer={DEMO_TOKENIZER}", "data.max_len=48", "data.pad_to_multiple=16",
            "train.global_batch_size=8", "optim.learning_rate=3e-3", "checkpoint.init_from=null",
            "checkpoint.save_every=null", "checkpoint.async_save=false", "mesh.fsdp=1", "mesh.data=-1",
            f"eval.data_dir={tmp_path / 'data'}", "eval.batch_size=8", "eval.max_new_tokens=8",
            "eval.max_prompt_len=48", "eval.temperature=0", "eval.repetition_penalty=1.0",
            f"eval.judge_base_url={server.url}", "eval.judge_model=judge-mini", "eval.judge_api_key_env=MINI_JUDGE_KEY",
        ])
        assert (cfg.train.epochs, cfg.optim.schedule, cfg.data.template) == (2, "constant", "belle")  # the paper's
        outputs = sweep(cfg, VOLUMES, print_fn=lambda line: None)
        judged = len(server.requests)
    assert judged >= 2 * len(EVAL_ITEMS) * 3  # every reply judged three times (re-asks come on top)

    manifests = [read_manifest(tmp_path / "runs" / v / "manifest.jsonl") for v in VOLUMES]
    assert [len(m) for m in manifests] == [16 + 4, 48 + 4]
    small, large = ({(e["id"], e["line"]) for e in m if e["ability"] == "belle"} for m in manifests)
    assert small < large  # nested volumes

    for volume, run in zip((16, 48), outputs.runs):
        summary = read_summary(run.eval_dirs[2] / "belle-eval_set.summary.json")
        assert (summary.run.data_source, summary.run.data_volume, summary.run.epoch) == ("belle+alpaca", volume, 2)
        assert summary.details["decoding"]["name"] == "greedy" and summary.details["judge"]["model"] == "judge-mini"
        items = [json.loads(line) for line in (run.eval_dirs[2] / "belle-eval_set.items.jsonl").open(encoding="utf-8")]
        assert len(items) == len(EVAL_ITEMS)
        for item, spec in zip(items, EVAL_ITEMS):
            # The judge's rule, applied here to the reply the model gave: the mean of three equal judgements.
            want = float(judge_like(item["judge_message"]).split("得分")[1].lstrip(":： ").split("/")[0]
                         .split("分")[0].split()[0])
            assert item["judgements"] == [want] * 3 and item["parsed"] == pytest.approx(want)
            assert ("标准回答" in item["judge_message"]) == bool(spec["std_answer"])
        scores = {a.name: a.score for a in summary.abilities}
        assert set(scores) == {"open qa", "closed qa", "classification", "generation", "math", "code"}
        assert summary.details["overall_without_math_code"] == pytest.approx(
            sum(v for k, v in scores.items() if k not in ("math", "code")) / 4)

    report = tmp_path / "runs" / "report"
    with (report / "belle-eval_set.study.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    ours = {(r["use_case"], int(r["volume"])) for r in rows if r["panel"].startswith("this evaluation")}
    assert {("Overall", 16), ("Overall", 48), ("Overall w/o math & code", 48), ("Open QA", 16)} <= ours
    assert any(r["panel"].startswith("paper") for r in rows)
    assert (report / "belle-eval_set.study.png").stat().st_size > 10_000
