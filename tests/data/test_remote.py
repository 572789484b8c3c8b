"""Local copies of gs:// inputs (jaxtune/data/remote.py), against the GCS emulator (tests/gcs_emulator.py): a
tokenizer and an evaluation data folder read from a bucket, fetched once per host into JAXTUNE_CACHE_DIR, reused by
a later process without a download, fetched again when an object changes. gs:// is reached from child processes
(gcsfs reads the emulator's settings when first imported)."""

from __future__ import annotations

import json
from pathlib import Path

from gcs_emulator import gcs, run_python  # noqa: F401  (gcs: the fixture)

from jaxtune.data.remote import cache_dir, local_input
from jaxtune.demo import DEMO_TOKENIZER

REPO = Path(__file__).resolve().parents[2]


def _child(gcs, cache: Path, code: str) -> dict:
    """Run ``code`` in a fresh Python pointed at the emulator and the cache; the JSON it prints last."""
    proc = run_python(gcs, code, timeout=120, env={"JAXTUNE_CACHE_DIR": str(cache)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _entries(cache: Path) -> dict[str, int]:
    """The cache's entries (hidden temporary folders included) and their inode numbers."""
    return {p.name: p.stat().st_ino for p in cache.iterdir()} if cache.is_dir() else {}


LOAD = """
    import json
    from jaxtune.data.remote import local_input
    from jaxtune.data.tokenizer import load_tokenizer
    from jaxtune.eval.suites.registry import suite_data_root

    tok = load_tokenizer("gs://inputs/tok")
    root = suite_data_root("doit", "gs://inputs/eval")
    model = local_input("gs://inputs/tok/tokenizer.model")  # a single object: a file of that name
    print(json.dumps({"vocab": tok.vocab_size, "encoded": tok.encode("hello world"), "tok": str(local_input("gs://inputs/tok")),
                      "root": str(root), "files": sorted(p.name for p in root.rglob("*") if p.is_file()),
                      "model": [model.name, model.is_file(), load_tokenizer(model).vocab_size]}))
"""


def test_gs_inputs_are_fetched_once_per_host_and_again_when_they_change(gcs, tmp_path):
    gcs.make_bucket("inputs")
    gcs.upload_tree(DEMO_TOKENIZER, "inputs", "tok")
    gcs.upload("inputs", "eval/doit/test/math.jsonl", b'{"instruction": "1+1?", "output": "2"}\n')
    cache = tmp_path / "cache"

    first = _child(gcs, cache, LOAD)
    local = local_input(DEMO_TOKENIZER)
    from jaxtune.data.tokenizer import load_tokenizer

    assert first["vocab"] == load_tokenizer(local).vocab_size and first["encoded"] == load_tokenizer(local).encode(
        "hello world"
    )
    assert Path(first["tok"]).name == "tok" and Path(first["tok"]).parent.parent == cache
    assert sorted(p.name for p in Path(first["tok"]).iterdir()) == ["tokenizer.model"]
    assert first["files"] == ["math.jsonl"] and Path(first["root"]).is_relative_to(cache)
    assert first["model"] == ["tokenizer.model", True, first["vocab"]]
    fetched = _entries(cache)
    assert len(fetched) == 3 and not [n for n in fetched if n.startswith(".tmp-")]

    # A second run on this host: the same copies, nothing fetched (a fetch would make a new folder, renamed in).
    assert _child(gcs, cache, LOAD) == first and _entries(cache) == fetched

    # An object overwritten (a new generation): that input alone is fetched again, into a new entry.
    gcs.upload("inputs", "eval/doit/test/math.jsonl", b'{"instruction": "2+2?", "output": "4"}\n')
    third = _child(gcs, cache, LOAD)
    assert third["tok"] == first["tok"] and third["root"] != first["root"]
    assert (Path(third["root"]) / "math.jsonl").read_text().startswith('{"instruction": "2+2?"')
    assert len(_entries(cache)) == 4 and fetched.items() <= _entries(cache).items()


def test_a_missing_gs_input_is_one_clear_error(gcs, tmp_path):
    gcs.make_bucket("empty")
    out = _child(
        gcs,
        tmp_path / "cache",
        """
        import json
        from jaxtune.data.tokenizer import TokenizerError, load_tokenizer
        try:
            load_tokenizer("gs://empty/tok")
        except TokenizerError as e:
            print(json.dumps({"error": str(e)}))
        """,
    )
    assert out == {"error": "tokenizer path gs://empty/tok does not exist"}
    assert not (tmp_path / "cache").exists()


def test_local_paths_pass_through_and_the_cache_location_is_documented(monkeypatch, tmp_path):
    assert local_input(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("JAXTUNE_CACHE_DIR", raising=False)
    assert cache_dir() == Path.home() / ".cache" / "jaxtune" / "gcs"
    monkeypatch.setenv("JAXTUNE_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
