"""A generated out-of-domain suite for the quickstart, in the C-Eval layout that :mod:`jaxtune.eval.suites.ceval`
scores (the DoIT study's OOD sets were C-Eval subjects).

Writes ``dev/{subject}_dev.csv`` (the k-shot exemplars), ``val/{subject}_val.csv`` (scored) with the header
``id,question,A,B,C,D,answer`` (dev adds ``explanation``), and ``subject_mapping.json``. Each subject asks about
the facts of a demo ability in a form that ability never trains on (an animal's class instead of which animal is in
a class; the earliest of four dynasties instead of true/false about two), so a score above chance (25%) is
knowledge carried over from the curated abilities: the study's third finding. Derived from a seed.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable
from pathlib import Path

from jaxtune.demo.abilities import ANIMALS, DYNASTIES, LETTERS

Question = tuple[str, list[str], str]
"""(question, the four options, the answer letter)."""


def _zoology(rng: random.Random) -> Question:
    category = rng.choice(list(ANIMALS))
    animal = rng.choice(ANIMALS[category])
    options = list(ANIMALS)
    rng.shuffle(options)
    return f"{animal}属于哪一类动物？", options, LETTERS[options.index(category)]


def _chronology(rng: random.Random) -> Question:
    picks = rng.sample(range(len(DYNASTIES)), 4)
    options = [DYNASTIES[i] for i in picks]
    return "下列朝代中，最早的是哪一个？", options, LETTERS[picks.index(min(picks))]


SUBJECTS: dict[str, tuple[list[str], Callable[[random.Random], Question]]] = {
    "zoology": (["Zoology", "动物分类", "STEM"], _zoology),
    "chronology": (["Chronology", "历史年代", "Humanities"], _chronology),
}
"""subject -> (its subject_mapping.json entry [English, Chinese, category], the question generator)."""


def _write(path: Path, rows: list[Question], explain: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "question", "A", "B", "C", "D", "answer"] + (["explanation"] if explain else []))
        for i, (question, options, answer) in enumerate(rows):
            w.writerow([i, question, *options, answer] + ([""] if explain else []))


def write_demo_ceval(out_dir: str | Path, *, dev: int = 5, val: int = 40, seed: int = 1) -> Path:
    """Write the generated C-Eval-format subjects under ``out_dir`` and return it."""
    out = Path(out_dir)
    rng = random.Random(seed)
    for subject, (_, make) in SUBJECTS.items():
        _write(out / "dev" / f"{subject}_dev.csv", [make(rng) for _ in range(dev)], explain=True)
        _write(out / "val" / f"{subject}_val.csv", [make(rng) for _ in range(val)], explain=False)
    mapping = {subject: entry for subject, (entry, _) in SUBJECTS.items()}
    (out / "subject_mapping.json").write_text(json.dumps(mapping, ensure_ascii=False, indent=1), encoding="utf-8")
    return out
