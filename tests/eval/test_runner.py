"""End-to-end evaluation of a tiny model on fixture suites of each kind, checked against transformers' PyTorch model.

The checkpoint is a random tiny LLaMA over the demo SentencePiece vocabulary plus DoIT's four special tokens, saved
as a jaxtune params checkpoint and as a Hugging Face folder. Replies, perplexities and letter logits recorded by the
suites are recomputed independently with transformers (prompts rendered by the suites helper's DoitChatCodec).
"""

from __future__ import annotations

import csv
import http.server
import json
import math
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

import jaxtune.demo
from jaxtune.checkpoint import expected_param_shapes, save_params
from jaxtune.config import EvalConfig, MeshConfig
from jaxtune.demo.abilities import write_demo_dataset
from jaxtune.eval.codecs import DoitChatCodec
from jaxtune.eval.runner import EvalSetupError, evaluate, load_model, run_info, suite_data_root
from jaxtune.models.configs import model_config

torch = pytest.importorskip("torch")
import jax  # noqa: E402
from flax import nnx  # noqa: E402

DEMO_TOKENIZER = Path(jaxtune.demo.__file__).parent / "tokenizer" / "tokenizer.model"
ADDED = {"<user>": 1000, "<assistant>": 1001, "<eot>": 1002, "<pad>": 1003}
MAX_NEW = 6


# --------------------------------------------------------------------------------------------------------------------
# Fixtures: a checkpoint in both formats, data folders of every suite, a judge
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jaxtune_checkpoint(gqa_pair, tmp_path_factory) -> Path:
    _, model = gqa_pair
    path = tmp_path_factory.mktemp("ckpt") / "jaxtune"
    save_params(path, nnx.state(model, nnx.Param), model.cfg, tokenizer_dir=DEMO_TOKENIZER, added_tokens=ADDED)
    return path


@pytest.fixture(scope="module")
def hf_checkpoint(gqa_pair, tmp_path_factory) -> Path:
    hf_model, _ = gqa_pair
    path = tmp_path_factory.mktemp("ckpt") / "hf"
    hf_model.save_pretrained(path, safe_serialization=True)
    shutil.copyfile(DEMO_TOKENIZER, path / "tokenizer.model")
    (path / "added_tokens.json").write_text(json.dumps(ADDED), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def codec() -> DoitChatCodec:
    """The suites helper's reference rendering of DoIT prompts (independent of the runner's template codec)."""
    return DoitChatCodec.from_sentencepiece(DEMO_TOKENIZER)


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def _mcq_rows(n: int, offset: int = 0) -> list[list[str]]:
    return [[f"第{i + offset}题：哪一个是{'甲乙丙丁'[i % 4]}？", "甲", "乙", "丙", "丁", "ABCD"[i % 4]] for i in range(n)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_demo_dataset(root / "doit", per_ability=1, eval_per_ability=2, synthetic=1)
    # C-Eval: two subjects with dev shots and val questions.
    mapping = {"physician": ["Physician", "医师资格", "Other"], "law": ["Law", "法学", "Humanities"]}
    (root / "ceval").mkdir()
    (root / "ceval" / "subject_mapping.json").write_text(json.dumps(mapping, ensure_ascii=False), encoding="utf-8")
    for s in mapping:
        header = ["id", "question", "A", "B", "C", "D", "answer"]
        _write_csv(root / "ceval" / "dev" / f"{s}_dev.csv", header, [[str(i), *r] for i, r in enumerate(_mcq_rows(2))])
        _write_csv(root / "ceval" / "val" / f"{s}_val.csv", header, [[str(i), *r] for i, r in enumerate(_mcq_rows(3, 5))])
    # CMMLU: one subject.
    meta = {"name_en2zh": {"anatomy": "解剖学"}, "subcategories": {"anatomy": ["biology"]},
            "categories": {"STEM": ["biology"]}}
    (root / "cmmlu").mkdir()
    (root / "cmmlu" / "subject_categories.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    header = ["", "Question", "A", "B", "C", "D", "Answer"]
    _write_csv(root / "cmmlu" / "dev" / "anatomy.csv", header, [[str(i), *r] for i, r in enumerate(_mcq_rows(2))])
    _write_csv(root / "cmmlu" / "test" / "anatomy.csv", header, [[str(i), *r] for i, r in enumerate(_mcq_rows(3, 9))])
    # AGIEval: one task, zero-shot.
    (root / "agieval").mkdir()
    lines = [{"passage": None, "question": f"问题{i}", "options": ["(A)甲", "(B)乙", "(C)丙", "(D)丁"],
              "label": "ABCD"[i % 4]} for i in range(3)]
    (root / "agieval" / "logiqa-zh.jsonl").write_text(
        "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    # BELLE: two classes, one item with a reference and one without.
    (root / "belle_eval").mkdir()
    prompts = [{"class": "open qa", "prompt": "请打分。"}, {"class": "rewrite", "prompt": "请评分。"}]
    items = [{"question": "天空是什么颜色？", "std_answer": "", "class": "open QA"},
             {"question": "改写：你好", "std_answer": "您好", "class": "rewrite"}]
    for name, rows in (("eval_prompt.json", prompts), ("eval_set.json", items)):
        (root / "belle_eval" / name).write_text(
            "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows), encoding="utf-8")
    return root


class _JudgeHandler(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that scores every answer 0.5 and records what it was sent."""

    received: list[dict] = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append(body)
        reply = json.dumps({"choices": [{"message": {"content": "得分: 0.5\n理由：一般。"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture()
def judge_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _JudgeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _JudgeHandler.received = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _eval_cfg(data_dir: Path, suites: list[str], **kw) -> EvalConfig:
    # 16 rows: each fixture suite fits in one or two batches (few compilations); a multiple of the 4-way sharded
    # data-parallel size below.
    return EvalConfig(suites=suites, data_dir=str(data_dir), max_new_tokens=MAX_NEW, batch_size=16, **kw)


def _items(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --------------------------------------------------------------------------------------------------------------------
# Independent references with transformers
# --------------------------------------------------------------------------------------------------------------------


def _hf_reply(hf_model, codec: DoitChatCodec, messages) -> str:
    ids = torch.tensor([codec.prompt_ids(messages)])
    with torch.no_grad():
        seq = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW, do_sample=False,
                                eos_token_id=list(codec.stop_ids), pad_token_id=ADDED["<pad>"])
    new = seq[0, ids.shape[1]:].tolist()
    return codec.decode([t for t in new if t not in codec.stop_ids]).strip()


def _hf_ppl(hf_model, codec: DoitChatCodec, messages, choice: str) -> float:
    context, reply = codec.prompt_ids(messages), codec.reply_ids(choice)
    ids = torch.tensor([context + reply])
    labels = ids.clone()
    labels[0, : len(context)] = -100
    with torch.no_grad():
        logits = hf_model(input_ids=ids).logits
    return math.exp(torch.nn.CrossEntropyLoss()(logits[0, :-1], labels[0, 1:]).item())


def _hf_letter_logits(hf_model, codec: DoitChatCodec, messages, pieces) -> np.ndarray:
    ids = torch.tensor([codec.prompt_ids(messages)])
    with torch.no_grad():
        logits = hf_model(input_ids=ids).logits[0, -1]
    return logits[[codec.piece_id(p) for p in pieces]].numpy()


# --------------------------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------------------------


def test_doit_end_to_end_matches_transformers(jaxtune_checkpoint, data_dir, gqa_pair, codec, tmp_path):
    hf_model, _ = gqa_pair
    out = tmp_path / "out"
    evaluation = evaluate(jaxtune_checkpoint, _eval_cfg(data_dir, ["doit"]), out,
                          metadata={"model_size": "tiny", "data_volume": "10", "epoch": "1"})
    summary_path, items_path = evaluation.files["doit-test"]
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    assert summary["run"]["data_volume"] == 10 and summary["run"]["checkpoint"] == str(jaxtune_checkpoint)
    assert len(summary["abilities"]) == 10 and all(a["n"] == 2 for a in summary["abilities"])
    items = _items(items_path)
    assert len(items) == 20
    records = {(r["ability"], r["idx"]): r for r in _raw_records(data_dir)}
    for item in items:
        record = records[(item["ability"], item["idx"])]
        if item["question_format"] == 1:
            expected = [_hf_ppl(hf_model, codec, record["messages"][:-1], c) for c in record["choices"]]
            np.testing.assert_allclose(item["perplexities"], expected, rtol=1e-4)
        else:
            assert item["reply"] == _hf_reply(hf_model, codec, record["messages"][:-1])
    assert "doit test" in evaluation.table()


def _raw_records(data_dir: Path) -> list[dict]:
    out = []
    for f in sorted((data_dir / "doit" / "curated" / "test").glob("*.json")):
        out += [dict(json.loads(line), ability=f.stem.removesuffix("_test")) for line in f.read_text().splitlines()]
    return out


def test_mcq_suites_end_to_end_match_transformers(jaxtune_checkpoint, data_dir, gqa_pair, codec, tmp_path):
    hf_model, _ = gqa_pair
    cfg = _eval_cfg(data_dir, ["ceval", "cmmlu", "agieval"], num_shots=0)
    evaluation = evaluate(jaxtune_checkpoint, cfg, tmp_path)
    assert set(evaluation.results) == {"ceval-0-shot", "cmmlu-0-shot", "agieval-zero-shot"}
    assert sorted(p.name for p in tmp_path.glob("*.summary.json")) == [
        "agieval-zero-shot.summary.json", "ceval-0-shot.summary.json", "cmmlu-0-shot.summary.json"]
    for stem, result in evaluation.results.items():
        pieces = result.summary.details["letter_pieces"]
        assert len(result.items) == {"ceval-0-shot": 6, "cmmlu-0-shot": 3, "agieval-zero-shot": 3}[stem]
        for item in result.items:
            expected = _hf_letter_logits(hf_model, codec, item["prompt"], pieces)
            np.testing.assert_allclose(item["letter_logits"], expected, atol=1e-4, rtol=1e-4)
            assert item["parsed"] == "ABCD"[int(np.argmax(expected))]


def test_belle_end_to_end_with_a_local_judge(jaxtune_checkpoint, data_dir, gqa_pair, codec, judge_url, tmp_path):
    hf_model, _ = gqa_pair
    cfg = _eval_cfg(data_dir, ["belle"], judge_base_url=judge_url, judge_model="fake-judge", judge_repeats=2)
    evaluation = evaluate(jaxtune_checkpoint, cfg, tmp_path)
    (result,) = evaluation.results.values()
    assert result.summary.overall == pytest.approx(0.5)
    assert len(_JudgeHandler.received) == 4  # 2 answers x 2 repeats
    for item in result.items:
        expected = _hf_reply(hf_model, codec, [{"role": "user", "content": item["prompt"]}])
        assert item["reply"] == expected
        assert f"'{expected}'" in item["judge_message"] or f"' {expected}'" in item["judge_message"]
    assert (tmp_path / "judge_cache.jsonl").is_file()


def test_hf_folder_loads_the_same_model(jaxtune_checkpoint, hf_checkpoint):
    from_hf = load_model(hf_checkpoint)
    from_jaxtune = load_model(jaxtune_checkpoint)
    assert from_hf.cfg.vocab_size == from_jaxtune.cfg.vocab_size == 1004
    a, b = (nnx.to_pure_dict(nnx.state(m, nnx.Param)) for m in (from_hf, from_jaxtune))
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_sharded_evaluation_matches_unsharded(jaxtune_checkpoint, data_dir):
    cfg = _eval_cfg(data_dir, ["doit"])
    reference = evaluate(jaxtune_checkpoint, cfg).results["doit-test"]
    sharded = evaluate(jaxtune_checkpoint, cfg, mesh=MeshConfig(data=2, fsdp=2, tensor=2)).results["doit-test"]
    assert len(sharded.items) == len(reference.items) == 20
    for a, b in zip(reference.items, sharded.items):
        assert a.get("reply") == b.get("reply")
        if "perplexities" in a:
            np.testing.assert_allclose(a["perplexities"], b["perplexities"], rtol=1e-4)
        if a.get("letter_logits") is not None:
            np.testing.assert_allclose(a["letter_logits"], b["letter_logits"], atol=1e-4)


def test_setup_errors_are_reported_before_loading(jaxtune_checkpoint, data_dir, tmp_path):
    with pytest.raises(EvalSetupError, match=r"unknown suite\(s\) \['mmlu'\]"):
        evaluate(jaxtune_checkpoint, _eval_cfg(data_dir, ["mmlu"]))
    with pytest.raises(EvalSetupError, match="eval.data_dir is not set"):
        evaluate(jaxtune_checkpoint, EvalConfig(suites=["doit"]))
    with pytest.raises(EvalSetupError, match="no cmmlu data found"):
        suite_data_root("cmmlu", data_dir / "doit")
    with pytest.raises(EvalSetupError, match="eval.judge_base_url, eval.judge_model"):
        evaluate(jaxtune_checkpoint, _eval_cfg(data_dir, ["belle"]))
    with pytest.raises(EvalSetupError, match="neither a jaxtune params checkpoint"):
        evaluate(tmp_path, _eval_cfg(data_dir, ["doit"]))
    with pytest.raises(EvalSetupError, match="unknown result metadata 'size'"):
        run_info("ckpt", {"size": "7b"})
    with pytest.raises(EvalSetupError, match="epoch must be an integer"):
        run_info("ckpt", {"epoch": "last"})


def test_template_tokens_beyond_the_model_vocabulary_are_an_error(data_dir, tmp_path):
    # A base model (vocabulary 1000) never resized for DoIT's role tokens, with a tokenizer that lacks them.
    cfg = model_config("tiny-gqa", vocab_size=1000)
    params = jax.tree.map(lambda shape: np.zeros(shape, np.float32), expected_param_shapes(cfg),
                          is_leaf=lambda x: isinstance(x, tuple))
    path = tmp_path / "base-model"
    save_params(path, params, cfg, tokenizer_dir=DEMO_TOKENIZER)
    with pytest.raises(EvalSetupError, match=r"template 'doit' needs tokens .*beyond the model's vocabulary of 1000"):
        evaluate(path, _eval_cfg(data_dir, ["doit"]))
