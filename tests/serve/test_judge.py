"""The BELLE miniature judged end to end by a served tiny model over HTTP: ``jaxtune eval`` on one checkpoint,
its judge a ``jaxtune serve`` of another; the summary records the judge checkpoint's hash, the judge prompt's hash
and the judge's decoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jaxtune.eval.judge_provenance import prompts_sha256
from jaxtune.eval.runner import evaluate
from jaxtune.eval.suites.belle import load_belle_prompts
from jaxtune.serve.identity import checkpoint_sha256
from jaxtune.serve.server import RunningServer, free_port, load_for_serving

from .conftest import serve_config

pytestmark = pytest.mark.timeout(300)

PROMPTS = [{"class": "open qa", "prompt": "请打分。"}, {"class": "rewrite", "prompt": "请评分。"}]
ITEMS = [
    {"question": "天空", "std_answer": "", "class": "open QA"},
    {"question": "你好", "std_answer": "您好", "class": "rewrite"},
]


def _belle_dir(root: Path) -> Path:
    (root / "belle_eval").mkdir(parents=True)
    for name, rows in (("eval_prompt.json", PROMPTS), ("eval_set.json", ITEMS)):
        text = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows)
        (root / "belle_eval" / name).write_text(text, encoding="utf-8")
    return root


def test_belle_judged_by_a_served_model(random_checkpoint, judge_checkpoint, tmp_path):
    data = _belle_dir(tmp_path / "data")
    with RunningServer(load_for_serving(judge_checkpoint, serve_config()), port=free_port()) as judge:
        cfg = serve_config(
            suites=["belle"],
            data_dir=str(data),
            judge_base_url=judge.base_url,
            judge_model=str(judge_checkpoint),  # the path alone names the served model too
            judge_max_tokens=None,  # the server's default: what its context leaves, at most eval.max_new_tokens
            judge_repeats=2,
        )
        result = evaluate(random_checkpoint, cfg, out_dir=tmp_path / "out").results["belle-eval_set"]
        assert judge.loaded.engine.rows_in_use() == 0
    summary = result.summary
    # The served judge answers every message "得分:1": every answer scores 1.
    assert summary.overall == pytest.approx(1.0) and summary.details["failed_judgements"] == 0
    assert [r["judge_replies"] for r in result.items] == [[["得分:1"], ["得分:1"]]] * 2
    provenance = summary.details["judge_provenance"]
    assert provenance["judge_checkpoint_sha256"] == checkpoint_sha256(judge_checkpoint)
    assert provenance["judge_checkpoint"] == str(judge_checkpoint) and provenance["judge_server"] == "jaxtune serve"
    assert provenance["judge_prompt_sha256"] == prompts_sha256(
        load_belle_prompts(data / "belle_eval" / "eval_prompt.json")
    )
    assert provenance["judge_decoding"]["temperature"] == 0.0 and provenance["judge_decoding"]["top_p"] == 1.0
    assert provenance["judge_decoding"]["max_tokens"] is None and provenance["judge_template"] == "doit"
    written = json.loads((tmp_path / "out" / "belle-eval_set.summary.json").read_text(encoding="utf-8"))
    assert json.dumps(written).count(provenance["judge_checkpoint_sha256"]) == 1
