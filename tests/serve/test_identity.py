"""The served model's identity: a content hash that follows the files, the model id, and the run's template."""

from __future__ import annotations

import shutil

from jaxtune.serve.identity import checkpoint_sha256, checkpoint_template, model_id


def test_the_hash_follows_the_content(tmp_path):
    ck = tmp_path / "run" / "epochs" / "3"
    (ck / "params").mkdir(parents=True)
    (ck / "params" / "a").write_bytes(b"weights")
    (ck / "model_config.json").write_text("{}")
    sha = checkpoint_sha256(ck)
    shutil.copytree(ck, tmp_path / "copy")
    assert checkpoint_sha256(tmp_path / "copy") == sha  # a copy elsewhere keeps it
    (ck / "params" / "a").write_bytes(b"weightz")
    assert checkpoint_sha256(ck) != sha  # a changed file changes it
    (ck / "params" / "a").write_bytes(b"weights")
    assert checkpoint_sha256(ck) == sha
    (ck / "params" / "a").rename(ck / "params" / "b")
    assert checkpoint_sha256(ck) != sha  # so does a renamed one
    assert model_id("gs://b/ck", "ab" * 32) == "gs://b/ck@sha256:" + "ab" * 6


def test_the_template_of_the_run(tmp_path):
    ck = tmp_path / "run" / "epochs" / "3"
    ck.mkdir(parents=True)
    assert checkpoint_template(ck) is None
    (tmp_path / "run" / "config.yaml").write_text("data:\n  template: belle\n")
    assert checkpoint_template(ck) == "belle"
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "chat_template.jinja").write_text("{{ messages }}")
    assert checkpoint_template(hf) == "hf_chat"
