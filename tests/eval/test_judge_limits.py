"""eval.judge_timeout_s and eval.judge_retries reach the judge (a judge that never answers gave up only after
6.5 silent minutes: 60 s x 6 tries, not configurable), and each retry is a line of its own."""

from __future__ import annotations

import logging

import pytest

from jaxtune.config.loading import load_config
from jaxtune.eval.judge import Judge, JudgeError
from jaxtune.eval.suites.belle import judge_settings

from .judge_server import JudgeServer


def test_the_keys_reach_the_judge_and_each_retry_is_a_line(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("JUDGE_API_KEY", "k")
    with JudgeServer(slow_s=1.0) as server:
        cfg = load_config(
            None,
            [
                f"eval.judge_base_url={server.url}",
                "eval.judge_model=m",
                "eval.judge_timeout_s=0.2",
                "eval.judge_retries=2",
            ],
        )
        settings = judge_settings(cfg.eval)
        assert (settings.timeout_s, settings.max_retries) == (0.2, 2)
        with caplog.at_level(logging.WARNING, logger="jaxtune.eval.judge"):
            with pytest.raises(JudgeError, match="failed 3 times"):
                Judge(settings).judge("评分提示 问题 标准回答:x 模型回答：' [DOWN]'。", 0)
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2 and "retry 1 of 2" in retries[0] and "retry 2 of 2" in retries[1]


def test_the_keys_are_checked(tmp_path):
    with pytest.raises(Exception, match="eval.judge_timeout_s"):
        load_config(None, ["eval.judge_timeout_s=0"])
