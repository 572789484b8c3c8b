"""End-to-end evaluation of a tiny model on fixture suites of each kind, checked against transformers' PyTorch model.

The checkpoint (conftest's ``jaxtune_checkpoint``) is a random tiny LLaMA over the demo SentencePiece vocabulary
plus DoIT's four special tokens. Replies, perplexities and letter logits recorded by the suites are recomputed
independently with transformers, on prompts rendered by the study's own DoIT rendering (tests/eval/study_doit.py).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxtune.config.schema import EvalConfig, MeshConfig
from jaxtune.demo.abilities import write_demo_dataset
from jaxtune.eval.errors import EvalSetupError
from jaxtune.eval.language_model import JaxLanguageModel
from jaxtune.eval.runner import evaluate, run_info
from jaxtune.eval.sampling import SamplingParams
from jaxtune.eval.suites.registry import suite_data_root

from .conftest import DOIT_ADDED
from .judge_server import JudgeServer
from .study_doit import StudyDoitRendering

torch = pytest.importorskip("torch")

MAX_NEW = 6


# --------------------------------------------------------------------------------------------------------------------
# Fixtures: data folders of every suite
# --------------------------------------------------------------------------------------------------------------------


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def _mcq_rows(n: int, offset: int = 0) -> list[list[str]]:
    return [
        [f"第{i + offset}题：哪一个是{'甲乙丙丁'[i % 4]}？", "甲", "乙", "丙", "丁", "ABCD"[i % 4]] for i in range(n)
    ]


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
        for split, rows in (("dev", _mcq_rows(2)), ("val", _mcq_rows(3, 5))):
            _write_csv(root / "ceval" / split / f"{s}_{split}.csv", header, [[str(i), *r] for i, r in enumerate(rows)])
    # CMMLU: one subject.
    meta = {
        "name_en2zh": {"anatomy": "解剖学"},
        "subcategories": {"anatomy": ["biology"]},
        "categories": {"STEM": ["biology"]},
    }
    (root / "cmmlu").mkdir()
    (root / "cmmlu" / "subject_categories.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    header = ["", "Question", "A", "B", "C", "D", "Answer"]
    _write_csv(root / "cmmlu" / "dev" / "anatomy.csv", header, [[str(i), *r] for i, r in enumerate(_mcq_rows(2))])
    _write_csv(root / "cmmlu" / "test" / "anatomy.csv", header, [[str(i), *r] for i, r in enumerate(_mcq_rows(3, 9))])
    # AGIEval: one task, zero-shot.
    (root / "agieval").mkdir()
    lines = [
        {
            "passage": None,
            "question": f"问题{i}",
            "options": ["(A)甲", "(B)乙", "(C)丙", "(D)丁"],
            "label": "ABCD"[i % 4],
        }
        for i in range(3)
    ]
    (root / "agieval" / "logiqa-zh.jsonl").write_text(
        "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8"
    )
    # BELLE: two classes, one item with a reference and one without.
    (root / "belle_eval").mkdir()
    prompts = [{"class": "open qa", "prompt": "请打分。"}, {"class": "rewrite", "prompt": "请评分。"}]
    items = [
        {"question": "天空是什么颜色？", "std_answer": "", "class": "open QA"},
        {"question": "改写：你好", "std_answer": "您好", "class": "rewrite"},
    ]
    for name, rows in (("eval_prompt.json", prompts), ("eval_set.json", items)):
        (root / "belle_eval" / name).write_text(
            "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows), encoding="utf-8"
        )
    return root


def _eval_cfg(data_dir: Path, suites: list[str], **kw) -> EvalConfig:
    # 16 rows: each fixture suite fits in one or two batches (few compilations); a multiple of the 4-way sharded
    # data-parallel size below.
    return EvalConfig(suites=suites, data_dir=str(data_dir), max_new_tokens=MAX_NEW, batch_size=16, **kw)


def _items(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --------------------------------------------------------------------------------------------------------------------
# Independent references with transformers
# --------------------------------------------------------------------------------------------------------------------


def _hf_reply(hf_model, codec: StudyDoitRendering, messages) -> str:
    ids = torch.tensor([codec.prompt_ids(messages)])
    with torch.no_grad():
        seq = hf_model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=MAX_NEW,
            do_sample=False,
            eos_token_id=list(codec.stop_ids),
            pad_token_id=DOIT_ADDED["<pad>"],
        )
    new = seq[0, ids.shape[1] :].tolist()
    return codec.decode([t for t in new if t not in codec.stop_ids]).strip()


def _hf_ppl(hf_model, codec: StudyDoitRendering, messages, choice: str) -> float:
    context, reply = codec.prompt_ids(messages), codec.reply_ids(choice)
    ids = torch.tensor([context + reply])
    labels = ids.clone()
    labels[0, : len(context)] = -100
    with torch.no_grad():
        logits = hf_model(input_ids=ids).logits
    return math.exp(torch.nn.CrossEntropyLoss()(logits[0, :-1], labels[0, 1:]).item())


def _hf_letter_logits(hf_model, codec: StudyDoitRendering, messages, pieces) -> np.ndarray:
    ids = torch.tensor([codec.prompt_ids(messages)])
    with torch.no_grad():
        logits = hf_model(input_ids=ids).logits[0, -1]
    return logits[[codec.piece_id(p) for p in pieces]].numpy()


# --------------------------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------------------------


def test_doit_end_to_end_matches_transformers(jaxtune_checkpoint, data_dir, gqa_pair, doit_codec, tmp_path):
    hf_model, _ = gqa_pair
    jax.clear_caches()  # programs an earlier test compiled in this process would otherwise not be counted
    out = tmp_path / "out"
    evaluation = evaluate(
        jaxtune_checkpoint,
        _eval_cfg(data_dir, ["doit"]),
        out,
        metadata={"model_size": "tiny", "data_volume": "10", "epoch": "1"},
    )
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
            expected = [_hf_ppl(hf_model, doit_codec, record["messages"][:-1], c) for c in record["choices"]]
            np.testing.assert_allclose(item["perplexities"], expected, rtol=1e-4)
        else:
            assert item["reply"] == _hf_reply(hf_model, doit_codec, record["messages"][:-1])
    assert "doit test" in evaluation.table()
    compiled = evaluation.compiles.get("compiles/generation", 0) + evaluation.compiles.get(
        "compile_cache_hits/generation", 0
    )
    assert compiled >= 1, evaluation.compiles  # the fixture's jax.clear_caches(): this evaluation compiles its programs


def _raw_records(data_dir: Path) -> list[dict]:
    out = []
    for f in sorted((data_dir / "doit" / "curated" / "test").glob("*.json")):
        out += [dict(json.loads(line), ability=f.stem.removesuffix("_test")) for line in f.read_text().splitlines()]
    return out


def test_mcq_suites_end_to_end_match_transformers(jaxtune_checkpoint, data_dir, gqa_pair, doit_codec, tmp_path):
    hf_model, _ = gqa_pair
    cfg = _eval_cfg(data_dir, ["ceval", "cmmlu", "agieval"], num_shots=0)
    evaluation = evaluate(jaxtune_checkpoint, cfg, tmp_path)
    assert set(evaluation.results) == {"ceval-0-shot", "cmmlu-0-shot", "agieval-zero-shot"}
    assert sorted(p.name for p in tmp_path.glob("*.summary.json")) == [
        "agieval-zero-shot.summary.json",
        "ceval-0-shot.summary.json",
        "cmmlu-0-shot.summary.json",
    ]
    for stem, result in evaluation.results.items():
        pieces = result.summary.details["letter_pieces"]
        assert len(result.items) == {"ceval-0-shot": 6, "cmmlu-0-shot": 3, "agieval-zero-shot": 3}[stem]
        for item in result.items:
            expected = _hf_letter_logits(hf_model, doit_codec, item["prompt"], pieces)
            np.testing.assert_allclose(item["letter_logits"], expected, atol=1e-4, rtol=1e-4)
            assert item["parsed"] == "ABCD"[int(np.argmax(expected))]


def test_belle_end_to_end_with_a_local_judge(jaxtune_checkpoint, data_dir, gqa_pair, doit_codec, tmp_path):
    hf_model, _ = gqa_pair
    with JudgeServer() as judge:
        cfg = _eval_cfg(data_dir, ["belle"], judge_base_url=judge.url, judge_model="fake-judge", judge_repeats=2)
        evaluation = evaluate(jaxtune_checkpoint, cfg, tmp_path)
    (result,) = evaluation.results.values()
    assert len(judge.requests) == 4  # 2 answers x 2 repeats
    # The fake judge gives 0.8 without a reference and 0.5 to an answer that differs from it.
    assert {a.name: a.score for a in result.summary.abilities} == {"open qa": 0.8, "rewrite": 0.5}
    assert result.summary.details["judge"]["model"] == "fake-judge"
    for item in result.items:
        expected = _hf_reply(hf_model, doit_codec, [{"role": "user", "content": item["prompt"]}])
        assert item["reply"] == expected
        assert f"'{expected}'" in item["judge_message"] or f"' {expected}'" in item["judge_message"]
    assert (tmp_path / "judge_cache.jsonl").is_file()


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


def test_belle_keeps_its_answers_through_a_judge_failure_and_resumes_judging(
    jaxtune_checkpoint, data_dir, tmp_path, monkeypatch, capsys
):
    # Before: a judge failure after the generation phase lost every answer (the rerun generated them all again),
    # and a corrupt judge-cache line ended the run with a traceback after generating.
    from jaxtune.cli import main
    from jaxtune.eval.judge import JudgeCacheError, JudgeError
    from jaxtune.eval.suites.belle import ANSWERS_FILE

    generated: list[int] = []
    real_generate = JaxLanguageModel.generate

    def counting_generate(self, prompts, *args, **kwargs):
        generated.append(len(prompts))
        return real_generate(self, prompts, *args, **kwargs)

    monkeypatch.setattr(JaxLanguageModel, "generate", counting_generate)
    monkeypatch.setenv("RUNNER_JUDGE_KEY", "wrong-key")
    out = tmp_path / "out"
    with JudgeServer(expected_key="right-key") as judge:
        cfg = _eval_cfg(
            data_dir,
            ["belle"],
            judge_base_url=judge.url,
            judge_model="fake-judge",
            judge_repeats=2,
            judge_api_key_env="RUNNER_JUDGE_KEY",
        )
        with pytest.raises(JudgeError, match="HTTP 401"):
            evaluate(jaxtune_checkpoint, cfg, out)
        assert sum(generated) == 2
        saved = _items(out / ANSWERS_FILE)
        assert saved[0]["generation"]["checkpoint"] == str(jaxtune_checkpoint)
        assert [r["question"] for r in saved[1:]] == ["天空是什么颜色？", "改写：你好"]

        monkeypatch.setenv("RUNNER_JUDGE_KEY", "right-key")
        evaluation = evaluate(jaxtune_checkpoint, cfg, out)
        assert sum(generated) == 2  # nothing generated again
        (result,) = evaluation.results.values()
        assert [item["reply"] for item in result.items] == [r["answer"] for r in saved[1:]]
        assert {a.name: a.score for a in result.summary.abilities} == {"open qa": 0.8, "rewrite": 0.5}
        table = evaluation.table()
        assert "judge: 0 of 4 judgements unparseable after re-asks (0.0%); 0 of 2 answers unscored" in table

        # Other decoding settings: the answers are made again.
        evaluate(jaxtune_checkpoint, dataclasses.replace(cfg, max_new_tokens=MAX_NEW - 1), out)
        assert sum(generated) == 4

        # A corrupt cache line is named by file and line before anything is generated (and the CLI prints one line).
        cache = out / "judge_cache.jsonl"
        lines = cache.read_text(encoding="utf-8").splitlines()
        cache.write_text("\n".join([lines[0], '{"key": 1, "score"', *lines[1:]]) + "\n", encoding="utf-8")
        with pytest.raises(JudgeCacheError, match=rf"{cache}:2: corrupt judge cache line"):
            evaluate(jaxtune_checkpoint, cfg, out)
        assert sum(generated) == 4
        code = main(
            [
                "eval",
                str(jaxtune_checkpoint),
                "--suite",
                "belle",
                "--out",
                str(out),
                f"eval.data_dir={data_dir}",
                f"eval.judge_base_url={judge.url}",
                "eval.judge_model=fake-judge",
                "eval.judge_api_key_env=RUNNER_JUDGE_KEY",
            ]
        )
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith(f"jaxtune eval: error: {cache}:2: corrupt judge cache line")


def test_ids_beyond_the_tokenizer_are_never_generated(gqa_pair, data_dir, tmp_path):
    # A model with 12 rows more than its tokenizer (1004 ids: a padded or resized vocabulary, as Qwen2.5's 152,064
    # rows for 151,665 tokens) whose head makes id 1004 or 1005 the best token at every step: before, decoding the
    # reply failed ("piece id is out of range"); now such ids are never chosen and the suite runs.
    from flax import nnx

    from jaxtune.checkpoint.params import save_params
    from jaxtune.models.llama import Llama

    from .conftest import DEMO_TOKENIZER, model_from_params

    _, model = gqa_pair
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    head = params["lm_head"]
    direction = np.random.default_rng(0).standard_normal(head.shape[0]).astype(head.dtype)
    params["lm_head"] = np.concatenate([head, 20 * direction[:, None], -20 * direction[:, None], head[:, :10]], 1)
    params["embed_tokens"] = np.concatenate([params["embed_tokens"], params["embed_tokens"][:12]], 0)
    cfg = dataclasses.replace(model.cfg, vocab_size=model.cfg.vocab_size + 12)
    wide: Llama = model_from_params(cfg, params)
    path = tmp_path / "wide"
    save_params(path, nnx.state(wide, nnx.Param), cfg, tokenizer_dir=DEMO_TOKENIZER, added_tokens=DOIT_ADDED)
    # The premise: unmasked, greedy decoding picks those ids.
    unmasked = JaxLanguageModel(wide, batch_size=4).generate([[1, 5, 9, 14]], 3, stop_ids=())
    assert set(unmasked[0].tokens) <= {1004, 1005}
    evaluation = evaluate(path, _eval_cfg(data_dir, ["doit"]), tmp_path / "out")
    result = evaluation.results["doit-test"]
    assert result.summary.abilities and len(result.items) == len(_items(tmp_path / "out" / "doit-test.items.jsonl"))
    masked = JaxLanguageModel(wide, batch_size=4, sampling=SamplingParams(known_ids=1004))
    assert all(t < 1004 for t in masked.generate([[1, 5, 9, 14]], 3, stop_ids=())[0].tokens)
