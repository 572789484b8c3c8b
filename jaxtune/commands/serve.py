"""``jaxtune serve CHECKPOINT``: an OpenAI-compatible HTTP server over a checkpoint (see :mod:`jaxtune.serve`).

Also the shared part of ``jaxtune chat``: :func:`load` reads the config (``--config`` plus ``key=value``
overrides), picks the checkpoint's template unless ``eval.template`` is given, builds the mesh and loads.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments ``serve`` and ``chat`` share."""
    p.add_argument("checkpoint", help="a jaxtune params checkpoint or a Hugging Face LLaMA/BLOOM folder")
    p.add_argument("--config", help="YAML config whose eval (and mesh) section to use")
    p.add_argument("--rows", type=int, default=None, help="rows decoded together (default: eval.batch_size)")
    p.add_argument(
        "--context",
        type=int,
        default=None,
        help="tokens per row, prompt and reply together (default: eval.max_prompt_len + eval.max_new_tokens, "
        "at most the model's max_position_embeddings)",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        help="key=value overrides: eval.template=belle, eval.temperature=0.35, eval.top_k=30, eval.max_new_tokens=200 ...",
    )


def load(args: argparse.Namespace, max_queue: int = 64) -> Any:
    """The checkpoint of ``args`` loaded for serving (:class:`jaxtune.serve.server.Loaded`)."""
    from jaxtune.config.loading import load_config
    from jaxtune.eval.distributed import eval_mesh_config, setup_mesh
    from jaxtune.serve.identity import checkpoint_template
    from jaxtune.serve.server import load_for_serving

    overrides = list(args.overrides)
    if not any(o.startswith("eval.template=") for o in overrides):
        template = checkpoint_template(args.checkpoint)
        if template is not None:
            overrides.append(f"eval.template={template}")
    cfg = load_config(args.config, overrides)
    mesh = setup_mesh(eval_mesh_config(cfg))
    return load_for_serving(
        args.checkpoint, cfg.eval, rows=args.rows, context=args.context, max_queue=max_queue, mesh=mesh
    )


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted (process 0 answers HTTP; the other processes of a pod slice follow its plans)."""
    import jax

    from jaxtune.serve.server import RunningServer

    loaded = load(args, max_queue=args.max_queue)
    if jax.process_index() != 0:
        loaded.engine.follow()
        return 0
    server = RunningServer(loaded, host=args.host, port=args.port)
    print(f"serving {loaded.model.id} on {server.base_url} (template {loaded.card['template']})", file=sys.stderr)
    server.serve_forever()
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``serve`` to the ``jaxtune`` command's sub-parsers."""
    help = "serve a checkpoint over HTTP (OpenAI-compatible: /v1/chat/completions, /v1/completions, /v1/models)"
    p = subparsers.add_parser("serve", help=help, description=help)
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait for a row; more get HTTP 429")
    p.set_defaults(fn=run)
    return p
