"""Where a run trained on a ``budget:PATH`` selection lives and what it is labelled, so that ``jaxtune sweep``
(:mod:`jaxtune.study.sweep`), the grid's cells (:mod:`jaxtune.study.grid`) and the quickstart agree.

- folder (under the sweep's ``run_dir``): ``{source}-{total}-{digest}``, ``digest`` the first 8 hex digits of the
  SHA-256 of the counts (JSON, keys sorted): a path is no folder name, and a budget file whose counts changed (a new
  ``jaxtune budget`` into the same folder) trains a new run rather than reusing the old one;
- data source: ``budget``, or ``reconstruct-scaled`` for a ``rule.json`` (told apart by its ``rule`` key)
  (:mod:`jaxtune.study.budget_report`, which tables them beside the uniform run);
- data volume: the total of the counts.

Other selections' folders are the selection itself.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from jaxtune.data.mixtures import BUDGET_PREFIX, read_budget_counts
from jaxtune.paths import as_path
from jaxtune.study.budget_report import BUDGET_SOURCE, RULE_SOURCE


def budget_run_label(path: str | Path) -> tuple[str, int, str]:
    """(data source, total, run folder name) of a run trained on ``budget:path`` (see the module docstring)."""
    counts = read_budget_counts(path)
    data = json.loads(as_path(path).read_text(encoding="utf-8"))
    source = RULE_SOURCE if "rule" in data else BUDGET_SOURCE
    digest = hashlib.sha256(json.dumps(counts, sort_keys=True).encode()).hexdigest()[:8]
    total = sum(counts.values())
    return source, total, f"{source}-{total}-{digest}"


def selection_folder(selection: str) -> str:
    """The folder of a selection's run under the sweep's ``run_dir`` (see the module docstring); reading a budget
    file raises its :class:`jaxtune.data.mixtures.SelectionError` when it is missing or malformed."""
    if selection.startswith(BUDGET_PREFIX):
        return budget_run_label(selection[len(BUDGET_PREFIX) :])[2]
    return selection
