"""Putting a checkpoint behind the engine: load the model and its chat codec, hash the checkpoint, size the batch,
and run the HTTP app with uvicorn (process 0; every other process of a pod slice follows the engine's plans).

Settings come from an :class:`~jaxtune.config.schema.EvalConfig` (``key=value`` overrides on the command line):
``eval.template``, ``eval.tokenizer``, ``eval.compute_dtype``, ``eval.bucket_multiple``, the decoding defaults
(``eval.temperature``, ``top_p``, ``top_k``, ``repetition_penalty``, ``seed``, ``max_new_tokens``), and the mesh
(``eval.mesh`` or ``mesh``) the parameters and the batch are sharded over.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from jax.sharding import Mesh

from jaxtune.config.schema import EvalConfig
from jaxtune.eval.distributed import default_compute_dtype
from jaxtune.eval.loading import load_codec, load_model, tokenizer_location
from jaxtune.serve.app import build_app
from jaxtune.serve.engine import Batch, Engine
from jaxtune.serve.identity import checkpoint_sha256, model_id
from jaxtune.serve.openai_api import ServedModel
from jaxtune.serve.request import Decoding

log = logging.getLogger(__name__)

DECODE_STEPS = 8
"""Tokens per device call at most while a reply is streamed or a request waits: the granularity of streaming and of
admitting a waiting request."""

MAX_DECODE_STEPS = 32
"""Tokens per device call at most when no reply is streamed and no request waits (fewer trips to the host)."""


@dataclass
class Loaded:
    """A checkpoint ready to serve: the engine (not started), what requests are checked against, the codec."""

    engine: Engine
    model: ServedModel
    codec: Any
    card: dict


def load_for_serving(
    checkpoint: str | Path,
    eval_cfg: EvalConfig,
    *,
    rows: Optional[int] = None,
    context: Optional[int] = None,
    max_queue: int = 64,
    mesh: Optional[Mesh] = None,
) -> Loaded:
    """Load ``checkpoint`` for serving. rows: the batch (default ``eval.batch_size``); context: cache slots per row,
    prompt and reply together (default ``eval.max_prompt_len + eval.max_new_tokens``, at most the model's
    ``max_position_embeddings``)."""
    sha = checkpoint_sha256(checkpoint)
    model = load_model(checkpoint, mesh=mesh, compute_dtype=default_compute_dtype(eval_cfg.compute_dtype))
    codec = load_codec(tokenizer_location(checkpoint, eval_cfg.tokenizer), eval_cfg.template, model.cfg.vocab_size)
    limit = model.cfg.max_position_embeddings
    context = min(context or eval_cfg.max_prompt_len + eval_cfg.max_new_tokens, limit)
    batch = Batch(
        model,
        rows=rows or eval_cfg.batch_size,
        context=context,
        steps=DECODE_STEPS,
        max_steps=MAX_DECODE_STEPS,
        known_ids=codec.tokenizer.vocab_size,
        bucket_multiple=eval_cfg.bucket_multiple,
        stop_ids=codec.stop_ids,
        mesh=mesh,
    )
    batch.warm_up()
    defaults = Decoding(
        max_tokens=eval_cfg.max_new_tokens,
        temperature=eval_cfg.temperature,
        top_p=eval_cfg.top_p,
        top_k=eval_cfg.top_k,
        repetition_penalty=eval_cfg.repetition_penalty,
        seed=eval_cfg.seed,
    )
    served = ServedModel(id=model_id(checkpoint, sha), checkpoint=str(checkpoint), context=context, defaults=defaults)
    card = {"checkpoint": str(checkpoint), "checkpoint_sha256": sha, "template": eval_cfg.template, "rows": batch.rows}
    return Loaded(Engine(batch, max_queue=max_queue), served, codec, card)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class RunningServer:
    """uvicorn serving a loaded checkpoint on a thread (:meth:`start`; tests, benchmarks) or in the foreground
    (:meth:`serve_forever`; ``jaxtune serve``). The engine runs on a thread of its own either way."""

    def __init__(self, loaded: Loaded, host: str = "127.0.0.1", port: int = 8000):
        import uvicorn

        self.loaded, self.host, self.port = loaded, host, port
        app = build_app(loaded.engine, loaded.model, loaded.codec, loaded.card)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self._thread: Optional[threading.Thread] = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout: float = 30.0) -> RunningServer:
        self.loaded.engine.start()
        self._thread = threading.Thread(target=self.server.run, name="jaxtune-serve-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the server did not start on {self.host}:{self.port}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.loaded.engine.stop()

    def serve_forever(self) -> None:
        """Serve until SIGTERM or Ctrl-C (main thread only); either stops the engine, whose last plan stops the
        other processes of a pod slice, before returning (SIGTERM) or raising KeyboardInterrupt (Ctrl-C)."""
        self.loaded.engine.start()
        # uvicorn shuts down on SIGTERM, then raises it again under the handler it found: by default that would end
        # the process before the engine stops, leaving the other processes waiting on a plan that never comes.
        previous = signal.signal(signal.SIGTERM, lambda *_: None)
        try:
            self.server.run()
        finally:
            self.loaded.engine.stop()
            signal.signal(signal.SIGTERM, previous)

    def __enter__(self) -> RunningServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
