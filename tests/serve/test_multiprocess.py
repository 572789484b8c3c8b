"""A pod slice's server: two ``jaxtune serve`` processes x 2 CPU devices on 127.0.0.1 (jax.distributed with an
explicit coordinator) serve one model, its batch sharded over the 4 devices; process 0 answers HTTP and the official
``openai`` client gets the greedy replies of the single-process server. On SIGTERM process 0 stops serving and its
last plan stops process 1."""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from jaxtune.serve.server import free_port

from .conftest import CONTEXT, ROWS

pytestmark = pytest.mark.timeout(300)

WORKER = Path(__file__).parents[1] / "cli_worker.py"
START_TIMEOUT_S = 180
QUESTIONS = ["what is two plus two", "name a colour", "write one word", "say hello"]


def _up(port: int, procs: list[subprocess.Popen], logs: list[Path]) -> None:
    """Wait until process 0 answers /health (failing if a process exits first or it takes too long)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            raise AssertionError("the pod server did not start:\n" + "\n".join(log.read_text()[-3000:] for log in logs))
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)


def _replies(base_url: str, model: str) -> list[str]:
    client = openai.OpenAI(base_url=base_url, api_key="unused", timeout=120, max_retries=0)

    def ask(question: str) -> str:
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                           max_tokens=24)  # fmt: skip
        return r.choices[0].message.content

    with ThreadPoolExecutor(len(QUESTIONS)) as pool:  # together: they share the batch
        return list(pool.map(ask, QUESTIONS))


def test_two_processes_serve_the_single_process_replies(server, random_checkpoint, tmp_path):
    port, coordinator = free_port(), free_port()
    args = [str(random_checkpoint), "--port", str(port), "--rows", str(ROWS), "eval.max_new_tokens=24",
            f"eval.max_prompt_len={CONTEXT - 24}", "eval.bucket_multiple=32", "eval.compute_dtype=float32",
            f"mesh.coordinator_address=127.0.0.1:{coordinator}", "mesh.num_processes=2"]  # fmt: skip
    logs = [tmp_path / f"process-{i}.log" for i in range(2)]
    procs = []
    try:
        for i, log in enumerate(logs):
            with open(log, "w") as out:
                procs.append(subprocess.Popen([sys.executable, str(WORKER), "2", "serve", *args, f"mesh.process_id={i}"],
                                              stdout=out, stderr=subprocess.STDOUT, cwd=str(WORKER.parents[1])))  # fmt: skip
        _up(port, procs, logs)
        (model,) = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused").models.list().data
        assert model.id == server.loaded.model.id  # the same checkpoint, path and hash
        served = _replies(f"http://127.0.0.1:{port}/v1", model.id)
        assert served == _replies(server.base_url, server.loaded.model.id)
        procs[0].send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    text = [log.read_text() for log in logs]
    assert codes[1] == 0 and codes[0] in (0, -signal.SIGTERM), "\n".join(t[-3000:] for t in text)
    assert "serving " in text[0] and "serving " not in text[1]  # only process 0 answers HTTP
