"""What a BELLE result records so that its judging can be reproduced: which judge, with which prompt, decoding how.

``judge_provenance(settings, prompts)`` returns (recorded as ``judge_provenance`` in the summary's details):

- ``judge_prompt_sha256``: SHA-256 of the judge prompts (``{class: prompt}`` as sorted-key JSON, UTF-8);
- ``judge_model``: the model id the requests named;
- ``judge_checkpoint``, ``judge_checkpoint_sha256``, ``judge_template``: what the judge server's ``GET /models``
  says of that model when the server is a ``jaxtune serve`` (None for a service that does not say);
- ``judge_decoding``: the judge's decoding: the server's defaults (a ``jaxtune serve`` lists them) with the request's
  ``temperature`` and ``max_tokens`` over them;
- ``judge_server``: ``jaxtune serve``, or why the server's model list said nothing of the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from collections.abc import Mapping
from typing import Any

from jaxtune.eval.judge import JudgeSettings


def prompts_sha256(prompts: Mapping[str, str]) -> str:
    """SHA-256 of the judge prompts per class."""
    return hashlib.sha256(json.dumps(dict(prompts), ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


def served_model_card(settings: JudgeSettings) -> tuple[dict[str, Any] | None, str]:
    """The judge server's ``/models`` entry of ``settings.model`` (matched by id or by jaxtune's ``checkpoint``), or
    None with the reason."""
    request = urllib.request.Request(settings.base_url.rstrip("/") + "/models")
    key = os.environ.get(settings.api_key_env)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=settings.timeout_s) as response:
            listing = json.loads(response.read().decode("utf-8"))
    except Exception as e:  # any failure only means the provenance is unknown: judging goes on
        return None, f"GET /models failed ({type(e).__name__})"
    entries = listing.get("data") if isinstance(listing, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and settings.model in (entry.get("id"), entry.get("checkpoint")):
            if "checkpoint_sha256" in entry:
                return entry, "jaxtune serve"
            return None, "the server does not give the model's checkpoint hash"
    return None, f"GET /models does not list {settings.model!r}"


def judge_provenance(settings: JudgeSettings, prompts: Mapping[str, str]) -> dict[str, Any]:
    """The judge's provenance fields (see the module docstring)."""
    card, server = served_model_card(settings)
    card = card or {}
    decoding = dict(card.get("decoding") or {})
    decoding.update({"temperature": settings.temperature, "max_tokens": settings.max_tokens})
    return {
        "judge_prompt_sha256": prompts_sha256(prompts),
        "judge_model": settings.model,
        "judge_checkpoint": card.get("checkpoint"),
        "judge_checkpoint_sha256": card.get("checkpoint_sha256"),
        "judge_template": card.get("template"),
        "judge_decoding": decoding,
        "judge_server": server,
    }
