"""Per-chip memory of jaxtune's train step on a TPU slice, from a deviceless ahead-of-time compile on this machine.

XLA's TPU compiler (libtpu) compiles the real step (forward, backward, AdamW; parameters and optimizer state laid
out by jaxtune.sharding's rules) for a TPU topology without any TPU attached, as ``jaxtune plan`` does (the same
functions: :func:`jaxtune.commands.plan.compiled_train_step` on :func:`~jaxtune.commands.plan.accelerator_devices`);
its memory analysis is the per-chip HBM the step needs. A config that does not fit fails to compile with RESOURCE_EXHAUSTED, naming what it needs.
With ``--attention splash`` the Pallas splash kernel is compiled for the TPU too, inside the shard_map that gives
each chip its own rows and heads.

With ``--eval`` it compiles evaluation's generation instead (:mod:`jaxtune.eval.aot`, as ``jaxtune plan`` does:
a prefill of ``--batch`` prompts of ``--length`` tokens, a refill of half the batch, and a chunk of decoding steps
over a KV cache of ``--length + --new-tokens`` slots), with the parameters in bfloat16 laid out by the same rules
and the KV cache sharded (rows over data x fsdp, key/value heads over tensor), as ``jaxtune eval`` runs it.

Needs libtpu: ``pip install -e '.[tpu]'`` (about 1.3 GB; or put a libtpu wheel's contents on PYTHONPATH).

    .venv/bin/python benchmarks/tpu_memory.py                                    # doit-7b, v5p-16 (8 chips), fsdp 4 x tensor 2
    .venv/bin/python benchmarks/tpu_memory.py --accelerator v5e-16 --mesh 1,16,1
    .venv/bin/python benchmarks/tpu_memory.py --model doit-33b --mesh 1,8,1 --remat full
    .venv/bin/python benchmarks/tpu_memory.py --eval --model doit-33b --mesh 1,2,4 --batch 32 --new-tokens 1024
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 1024**3


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="doit-7b", help="a preset of jaxtune.models.configs")
    p.add_argument("--layers", type=int, default=None, help="override the number of layers")
    p.add_argument("--accelerator", default="v5p-16", help="a TPU slice as `jaxtune plan` names it (v5p-16: 8 chips)")
    p.add_argument("--mesh", default="1,4,2", help="data,fsdp,tensor sizes over the topology's devices")
    p.add_argument("--batch", type=int, default=8, help="global batch (rows)")
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--microbatches", type=int, default=1)
    p.add_argument("--remat", default="full", help="model.remat_policy")
    p.add_argument("--attention", default="splash", choices=["splash", "xla"])
    p.add_argument("--backward", default="autodiff", choices=["autodiff", "layerwise"], help="train.backward")
    p.add_argument(
        "--eval",
        action="store_true",
        help="compile evaluation's generation (bf16 parameters, sharded KV cache) instead of the train step",
    )
    p.add_argument("--new-tokens", type=int, default=1024, help="with --eval: tokens generated after each prompt")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    import jax

    jax.config.update("jax_platforms", "cpu")
    from jaxtune.commands.plan import accelerator_devices
    from jaxtune.config.schema import ConfigError
    from jaxtune.hardware import parse_accelerator
    from jaxtune.models.configs import model_config

    acc = parse_accelerator(args.accelerator)
    try:
        devices = accelerator_devices(acc)
    except ConfigError as e:  # libtpu missing: the deviceless TPU compiler lives in it
        print(e)
        return 2
    cfg = dataclasses.replace(model_config(args.model), vocab_pad_multiple=128)
    if args.layers:
        cfg = dataclasses.replace(cfg, num_layers=args.layers)
    data, fsdp, tensor = (int(x) for x in args.mesh.split(","))
    print(
        f"{acc.name} ({acc.topology or acc.platform}): {len(devices)} devices ({devices[0].device_kind}); mesh data={data} "
        f"fsdp={fsdp} tensor={tensor}"
    )
    if args.eval:
        return _eval(args, cfg, devices, (data, fsdp, tensor))
    return _train(args, cfg, devices, (data, fsdp, tensor))


def _train(args: argparse.Namespace, model, devices, mesh: tuple[int, int, int]) -> int:
    """The train step as ``jaxtune plan`` compiles it, at the flags' batch, length, remat and attention."""
    from jaxtune.commands.plan import compiled_train_step
    from jaxtune.config.schema import Config, MeshConfig
    from jaxtune.models.stats import model_info

    base = Config()
    model = dataclasses.replace(
        model, compute_dtype="bfloat16", param_dtype="float32", remat_policy=args.remat, attention_impl=args.attention
    )
    cfg = dataclasses.replace(
        base,
        model=model,
        mesh=MeshConfig(data=mesh[0], fsdp=mesh[1], tensor=mesh[2]),
        train=dataclasses.replace(
            base.train, global_batch_size=args.batch, microbatches=args.microbatches, backward=args.backward
        ),
        data=dataclasses.replace(base.data, max_len=args.length),
    )
    info = model_info(model, args.length)
    print(
        f"model {args.model}: {model.num_layers} layers, {info.num_params / 1e9:.2f}B params; bf16 compute, fp32 "
        f"master weights and AdamW; remat {model.remat_policy}; attention {model.attention_impl}; backward "
        f"{args.backward}; global batch {args.batch} x {args.length} in {args.microbatches} microbatch(es)"
    )
    est, compiled = compiled_train_step(cfg, devices)
    if compiled is None:
        print(f"  does not compile: {est.error}")
        return 1
    kernels = compiled.as_text().count('custom_call_target="tpu_custom_call"')
    print(f"Pallas kernels in the compiled step: {kernels}")
    return _print_memory(compiled.memory_analysis(), ("arguments (params, AdamW state, batch)", "outputs"))


def _eval(args: argparse.Namespace, model, devices, mesh: tuple[int, int, int]) -> int:
    """Evaluation's generation programs (:mod:`jaxtune.eval.aot`), bf16 parameters, at the flags' sizes."""
    from jaxtune.config.schema import MeshConfig
    from jaxtune.eval.aot import compile_generation, eval_model_config
    from jaxtune.models.stats import model_info
    from jaxtune.sharding import abstract_model, activation_rules, build_mesh, validate_param_layout

    cfg = eval_model_config(model, "bfloat16")  # decoding with a cache attends with XLA
    on = build_mesh(MeshConfig(data=mesh[0], fsdp=mesh[1], tensor=mesh[2]), devices)
    _, shapes, axes = abstract_model(cfg)
    validate_param_layout(shapes, axes, on)
    with activation_rules(on):
        programs = compile_generation(cfg, on, batch=args.batch, prompt_len=args.length, new_tokens=args.new_tokens)
    info = model_info(cfg, args.length)
    print(
        f"model {args.model}: {cfg.num_layers} layers, {info.num_params / 1e9:.2f}B params; bf16 parameters "
        f"and compute; generation: {args.batch} prompts x {args.length} tokens + {args.new_tokens} new tokens "
        f"(KV cache of {args.length + args.new_tokens} slots)"
    )
    code = 0
    for label, compiled in programs:
        print(f"{label}:")
        if isinstance(compiled, Exception):  # XLA's RESOURCE_EXHAUSTED names what it needed
            print(f"  does not fit: {str(compiled).strip().splitlines()[-1][:300]}")
            code = 1
            continue
        code |= _print_memory(compiled.memory_analysis(), ("arguments (params, rows, prompts)", "outputs"))
    return code


def _print_memory(memory, labels: tuple[str, str]) -> int:
    for label, value in (
        (labels[0], memory.argument_size_in_bytes),
        (labels[1], memory.output_size_in_bytes),
        ("aliased (donated) ", memory.alias_size_in_bytes),
        ("temporaries", memory.temp_size_in_bytes),
    ):
        print(f"  {label:40s} {value / GIB:8.2f} GiB per device")
    peak = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes
    )
    print(f"  {'peak (args + outputs - aliased + temps)':40s} {peak / GIB:8.2f} GiB per device")
    return 0


if __name__ == "__main__":
    sys.exit(main())
