"""``jaxtune eval`` through the CLI: a judge that gives up on some BELLE items (the others are scored, the failed
ones named in the summary, exit 75, a rerun asks only for them), and the lease of a run it writes into."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from eval.judge_server import JudgeServer  # tests/ is on sys.path (rootdir conftest)

from jaxtune.cli import main

PROMPTS = [{"class": "open qa", "prompt": "请打分。"}, {"class": "rewrite", "prompt": "请评分。"}]
ITEMS = [
    {"question": "天空是什么颜色？", "std_answer": "", "class": "open qa"},
    {"question": "改写：你好 [GONE]", "std_answer": "您好", "class": "rewrite"},
    {"question": "改写：谢谢", "std_answer": "多谢", "class": "rewrite"},
]


def _belle_data(root: Path) -> Path:
    folder = root / "belle_eval"
    folder.mkdir(parents=True)
    for name, rows in (("eval_prompt.json", PROMPTS), ("eval_set.json", ITEMS)):
        (folder / name).write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows), encoding="utf-8")
    return root


def _eval(ckpt: Path, data: Path, out: Path, judge_url: str, *extra: str) -> int:
    return main(
        [
            "eval", str(ckpt), "--suite", "belle", "--out", str(out), f"eval.data_dir={data}",
            f"eval.judge_base_url={judge_url}", "eval.judge_model=fake-judge", "eval.judge_repeats=2",
            "eval.judge_timeout_s=0.5", "eval.judge_retries=1", "eval.max_new_tokens=4", "eval.batch_size=8",
            "eval.temperature=0", "eval.repetition_penalty=1.0", *extra,
        ]
    )  # fmt: skip


def test_a_judge_giving_up_on_some_items_names_them_and_a_rerun_asks_only_for_them(
    tiny_checkpoint, tmp_path, capsys, caplog, monkeypatch
):
    # Before: the first item the judge gave up on raised JudgeError: exit 2, no summary for the items it had judged,
    # and nothing said which items failed.
    monkeypatch.setenv("JUDGE_API_KEY", "k")
    data, out = _belle_data(tmp_path / "data"), tmp_path / "out"
    start = time.monotonic()
    with JudgeServer() as judge:
        judge.down.add("[GONE]")
        with caplog.at_level(logging.WARNING, logger="jaxtune.eval.judge"):
            code = _eval(tiny_checkpoint, data, out, judge.url)
        err = capsys.readouterr().err
        assert code == 75, err
        assert (
            err.strip()
            .splitlines()[-1]
            .startswith(
                "jaxtune eval: error: the judge gave up on 1 items (1 in belle-eval_set; listed in the summary's "
                "judge_failed, left out of the scores): run the same command again"
            )
        ), err
        gone = f"{data / 'belle_eval' / 'eval_set.json'}:2"
        retries = [r.getMessage() for r in caplog.records if "retry 1 of 1" in r.getMessage()]
        assert len(retries) == 2 and all(f"item {gone}" in m and "attempt 1" in m and "HTTP 503" in m for m in retries)
        summary = json.loads((out / "belle-eval_set.summary.json").read_text(encoding="utf-8"))
        assert summary["details"]["judge_failed"] == [gone]
        assert "left out of every score" in summary["details"]["notes"][-1]
        assert {a["name"]: a["n"] for a in summary["abilities"]} == {"open qa": 1, "rewrite": 1}
        items = [json.loads(line) for line in (out / "belle-eval_set.items.jsonl").read_text().splitlines()]
        assert [("judge_failed" in r) for r in items] == [False, True, False]

        # The judge is back: only the failed item's two judgements are asked.
        judge.down.clear()
        asked = len(judge.requests)
        assert _eval(tiny_checkpoint, data, out, judge.url) == 0, capsys.readouterr().err
        assert len(judge.requests) - asked == 2
    summary = json.loads((out / "belle-eval_set.summary.json").read_text(encoding="utf-8"))
    assert "judge_failed" not in summary["details"]
    assert {a["name"]: a["n"] for a in summary["abilities"]} == {"open qa": 1, "rewrite": 2}
    assert time.monotonic() - start < 20


def test_eval_writing_into_a_run_takes_its_lease(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    # Before: `jaxtune eval --out RUN/evals/...` wrote into a run a live training owned, without asking.
    from jaxtune.checkpoint.lease import RunLease

    monkeypatch.setenv("JUDGE_API_KEY", "k")
    data, run = _belle_data(tmp_path / "data"), tmp_path / "run"
    training = RunLease(run, timeout_s=300, command="jaxtune train run.yaml").acquire()
    with JudgeServer() as judge:
        try:
            code = _eval(tiny_checkpoint, data, run / "evals" / "e1", judge.url)
        finally:
            training.release()
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"jaxtune eval: error: {run / 'lock'}: the run directory is in use by host ")
        assert "'jaxtune train run.yaml'" in err and "heartbeat 0 s old" in err
        assert not (run / "evals").exists() and not judge.requests

        # The training ended: the evaluation takes the lease, writes, and gives the lease back.
        assert _eval(tiny_checkpoint, data, run / "evals" / "e1", judge.url) == 0, capsys.readouterr().err
    assert (run / "evals" / "e1" / "belle-eval_set.summary.json").is_file()
    assert not (run / "lock").exists()
