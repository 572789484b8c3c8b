"""The LLM judge against a real HTTP server on 127.0.0.1: request format, score parsing, re-asks, retries with
backoff, timeouts, the on-disk cache, bounded concurrency, and the API key never leaving the request header."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from jaxtune.eval.judge import Judge, JudgeCache, JudgeCacheError, JudgeError, JudgeSettings, parse_judge_score

from .judge_server import JudgeServer

KEY = "sk-test-SECRET-4242"
ENV = "JAXTUNE_TEST_JUDGE_KEY"


def msg(answer: str, std: str = "标准") -> str:
    return f"评分提示 问题 标准回答:{std}  模型回答：' {answer}'。请针对模型回答给出得分，顺便给出理由："


@pytest.fixture
def server():
    with JudgeServer(slow_s=1.0) as s:
        yield s


def settings(server: JudgeServer, **kw) -> JudgeSettings:
    base = dict(
        base_url=server.url,
        model="judge-x",
        api_key_env=ENV,
        timeout_s=0.3,
        backoff_s=0.01,
        max_backoff_s=0.05,
        max_retries=3,
        parse_retries=2,
        repeats=3,
        concurrency=4,
    )
    return JudgeSettings(**{**base, **kw})


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, KEY)


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("得分:0.8\n理由：好", 0.8),
        ("得分：1分。理由", 1.0),
        ("得分: 0.5/1", 0.5),
        ("得分：0分", 0.0),
        ("得分：１", 1.0),  # full-width digit
        ("得分：0.7 …… 总结：得分：0.7", 0.7),
        ("得分：4分", None),  # off the scale: never clamped
        ("分数：3分", None),  # not anchored on 得分
        ("得分：0.8 …… 最终得分：0.6", None),  # disagreeing scores
        ("得分: 8/10", None),
        ("得分：-0.5", None),
        ("很好", None),
    ],
)
def test_parse_score(reply: str, score: float | None) -> None:
    parsed, why = parse_judge_score(reply)
    assert parsed == score
    assert (why is None) == (score is not None)


def test_request_format_and_key_header(server: JudgeServer) -> None:
    j = Judge(settings(server))
    result = j.judge(msg("标准"), 0)
    assert result.score == 1.0 and not result.cached and len(result.replies) == 1
    (req,) = server.requests
    assert req["path"] == "/v1/chat/completions" and req["auth"] == f"Bearer {KEY}"
    assert req["body"] == {
        "model": "judge-x",
        "messages": [{"role": "user", "content": msg("标准")}],
        "temperature": 0.0,
        "max_tokens": 3000,
    }


def test_no_key_no_authorization_header(
    server: JudgeServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(ENV)
    with caplog.at_level(logging.WARNING):
        Judge(settings(server)).judge(msg("标准"), 0)
    assert server.requests[0]["auth"] is None and f"{ENV} is not set" in caplog.text


def test_reask_after_off_scale_and_failure_after_bounded_reasks(server: JudgeServer, tmp_path: Path) -> None:
    j = Judge(settings(server), tmp_path / "cache.jsonl")
    once = j.judge(msg("[OFFSCALE_ONCE]"), 0)
    assert once.score == 0.5 and once.replies[0] == "得分：4分" and len(once.replies) == 2
    bad = j.judge(msg("[MALFORMED]"), 0)
    assert bad.failed and len(bad.replies) == 3 and "no number" in bad.problem
    off = j.judge(msg("[OFFSCALE]"), 1)
    assert off.failed and "off the 0-1 scale" in off.problem
    asked = len(server.requests)
    again = Judge(settings(server), tmp_path / "cache.jsonl").judge(msg("[MALFORMED]"), 0)
    assert again.cached and again.failed and len(server.requests) == asked  # failures are cached too


@pytest.mark.parametrize(("marker", "requests"), [("[FLAKY500]", 2), ("[RATE]", 2), ("[SLOW]", 2), ("[GARBAGE]", 2)])
def test_transport_failures_are_retried(server: JudgeServer, marker: str, requests: int) -> None:
    result = Judge(settings(server)).judge(msg(marker), 0)
    assert result.score == 0.5 and len(server.requests) == requests


def test_hard_failures(server: JudgeServer) -> None:
    with pytest.raises(JudgeError, match="HTTP 400"):
        Judge(settings(server)).judge(msg("[BAD]"), 0)
    assert len(server.requests) == 1  # not retried
    with pytest.raises(JudgeError, match=r"failed 4 times; last error: HTTP 503"):
        Judge(settings(server)).judge(msg("[DOWN]"), 0)
    assert len(server.requests) == 1 + 4


def test_key_never_leaks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with JudgeServer(expected_key="another-key") as server:
        with pytest.raises(JudgeError) as err:
            Judge(settings(server), tmp_path / "c.jsonl").judge(msg("x"), 0)
        assert "HTTP 401" in str(err.value) and "***" in str(err.value) and KEY not in str(err.value)
    with JudgeServer() as server:
        j = Judge(settings(server), tmp_path / "c.jsonl")
        j.judge_all([msg("a"), msg("[MALFORMED]"), msg("[FLAKY500]")])
        assert KEY not in (tmp_path / "c.jsonl").read_text(encoding="utf-8")
        assert KEY not in json.dumps(j.settings.identity())
    assert KEY not in caplog.text


def test_a_key_echoed_by_the_endpoint_is_redacted_from_everything_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: an endpoint quoting the key in its reply put it into judge_cache.jsonl and the items file, and an error
    # body cut at 300 characters could leave part of it.
    caplog.set_level(logging.DEBUG)
    cache = tmp_path / "judge_cache.jsonl"
    with JudgeServer() as server:
        j = Judge(settings(server), cache)
        (echoed, garbage) = j.judge_all([msg("[ECHOKEY]"), msg("[ECHOKEY_GARBAGE]")])
        with pytest.raises(JudgeError) as err:
            j.judge(msg("[ECHOKEY_BAD]"), 0)
        assert len(server.requests) == 3 + 3 + 1 + 1  # the garbage reply was retried once
    assert KEY in server.requests[0]["auth"]  # the key did reach the server, and it sent it back
    assert [j.score for j in echoed] == [1.0] * 3 and "Bearer ***" in echoed[0].replies[0]
    assert [j.score for j in garbage] == [0.5] * 3
    assert "HTTP 400" in str(err.value) and "Bearer *" in str(err.value)
    written = cache.read_text(encoding="utf-8")
    for text in (written, caplog.text, str(err.value), json.dumps([list(x.replies) for x in echoed])):
        assert "SECRET" not in text  # not the key, nor a cut piece of it
    assert "Bearer ***" in written and "密钥 ***" in written
    # A cache written by an older version with the key inside is masked when read.
    entry = next(e for e in map(json.loads, written.splitlines()) if "密钥" in e["replies"][0])
    entry["replies"] = [f"echo {KEY}"]
    cache.write_text(json.dumps(entry, ensure_ascii=False) + "\n", encoding="utf-8")
    hit = Judge(settings(server), cache).judge(msg("[ECHOKEY]"), entry["repeat"])  # the same judge: no request
    assert hit.cached and hit.replies == ("echo ***",)


def test_cache_makes_a_rerun_ask_nothing(server: JudgeServer, tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"
    contents = [msg("标准"), msg("别的"), msg("标准", std="")]
    first = Judge(settings(server), path).judge_all(contents)
    assert len(server.requests) == 9
    assert [[j.score for j in row] for row in first] == [[1.0] * 3, [0.5] * 3, [0.5] * 3]
    assert [j.repeat for j in first[0]] == [0, 1, 2]
    second = Judge(settings(server), path).judge_all(contents)
    assert len(server.requests) == 9 and all(j.cached for row in second for j in row)
    # another judge model is another cache key
    Judge(settings(server, model="judge-y"), path).judge(contents[0], 0)
    assert len(server.requests) == 10
    # a crash mid-write leaves a truncated last line: ignored, that judgement asked again
    with path.open("a", encoding="utf-8") as f:
        f.write('{"key": "abc", "sco')
    assert len(JudgeCache(path)) == 10
    Judge(settings(server), path).judge(msg("新的"), 0)  # appended after the truncated line, on a line of its own
    assert len(JudgeCache(path)) == 11
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n", encoding="utf-8")
    with pytest.raises(JudgeCacheError, match=r"cache.jsonl:2: corrupt judge cache line"):
        JudgeCache(path)


def test_concurrency_is_bounded(tmp_path: Path) -> None:
    with JudgeServer(delay_s=0.05) as server:
        j = Judge(settings(server, concurrency=2, repeats=2))
        j.judge_all([msg(f"答{i}") for i in range(4)])
        assert len(server.requests) == 8 and server.max_in_flight == 2


def test_one_hard_failure_fails_the_batch(server: JudgeServer, tmp_path: Path) -> None:
    with pytest.raises(JudgeError, match="HTTP 400"):
        Judge(settings(server, concurrency=1), tmp_path / "c.jsonl").judge_all([msg("a"), msg("[BAD]"), msg("b")])


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="must start with http"):
        JudgeSettings(base_url="localhost:8000", model="m")
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        JudgeSettings(base_url="http://x/v1", model="m", repeats=0)
