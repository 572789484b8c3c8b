"""Per-chip memory of jaxtune's train step on a TPU slice, from a deviceless ahead-of-time compile on this machine.

XLA's TPU compiler (libtpu) compiles the real step (forward, backward, AdamW; parameters and optimizer state laid
out by jaxtune.sharding's rules) for a TPU topology without any TPU attached; its memory analysis is the per-chip
HBM the step needs. A config that does not fit fails to compile with RESOURCE_EXHAUSTED, naming what it needs.
With ``--attention splash`` the Pallas splash kernel is compiled for the TPU too, inside the shard_map that gives
each chip its own rows and heads.

With ``--eval`` it compiles evaluation's generation instead (:mod:`jaxtune.eval.aot`, as ``jaxtune plan`` does:
a prefill of ``--batch`` prompts of ``--length`` tokens, a refill of half the batch, and a chunk of decoding steps
over a KV cache of ``--length + --new-tokens`` slots), with the parameters in bfloat16 laid out by the same rules
and the KV cache sharded (rows over data x fsdp, key/value heads over tensor), as ``jaxtune eval`` runs it.

Needs libtpu: ``pip install -e '.[tpu]'`` (about 1.3 GB; or put a libtpu wheel's contents on PYTHONPATH).

    .venv/bin/python benchmarks/tpu_memory.py                                    # doit-7b, v5p-16 (8 chips), fsdp 4 x tensor 2
    .venv/bin/python benchmarks/tpu_memory.py --model doit-33b --mesh 1,8,1 --remat full
    .venv/bin/python benchmarks/tpu_memory.py --eval --model doit-33b --mesh 1,2,4 --batch 32 --new-tokens 1024
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 1024**3


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="doit-7b", help="a preset of jaxtune.models.configs")
    p.add_argument("--layers", type=int, default=None, help="override the number of layers")
    p.add_argument("--topology", default="v5:2x2x2", help="TPU topology name (v5 = v5p; 2x2x2 = 8 chips, v5p-16)")
    p.add_argument("--chips-per-host", default="2,2,1", help="chips per host along the topology's axes")
    p.add_argument("--mesh", default="1,4,2", help="data,fsdp,tensor sizes over the topology's devices")
    p.add_argument("--batch", type=int, default=8, help="global batch (rows)")
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--microbatches", type=int, default=1)
    p.add_argument("--remat", default="full", help="model.remat_policy")
    p.add_argument("--attention", default="splash", choices=["splash", "xla"])
    p.add_argument(
        "--eval",
        action="store_true",
        help="compile evaluation's generation (bf16 parameters, sharded KV cache) instead of the train step",
    )
    p.add_argument("--new-tokens", type=int, default=1024, help="with --eval: tokens generated after each prompt")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    import jax

    jax.config.update("jax_platforms", "cpu")
    try:
        import libtpu  # noqa: F401
    except ImportError:
        print("libtpu is not installed: pip install -e '.[tpu]' (the deviceless TPU compiler lives in it)")
        return 2
    import numpy as np
    from jax.experimental import topologies

    from jaxtune.config.schema import MeshConfig, OptimConfig
    from jaxtune.eval.aot import compile_generation, eval_model_config
    from jaxtune.models.configs import model_config
    from jaxtune.models.stats import model_info
    from jaxtune.sharding import (
        abstract_model,
        activation_rules,
        batch_sharding,
        build_mesh,
        validate_batch_layout,
        validate_param_layout,
        with_shardings,
    )
    from jaxtune.train.optim import build_optimizer
    from jaxtune.train.step import make_train_step, new_train_state, train_state_shardings

    cfg = model_config(args.model)
    if args.eval:  # parameters restored in the evaluation dtype; decoding with a cache attends with XLA
        cfg = eval_model_config(dataclasses.replace(cfg, vocab_pad_multiple=128), "bfloat16")
    else:
        cfg = dataclasses.replace(
            cfg,
            compute_dtype="bfloat16",
            param_dtype="float32",
            remat_policy=args.remat,
            attention_impl=args.attention,
            vocab_pad_multiple=128,
        )
    if args.layers:
        cfg = dataclasses.replace(cfg, num_layers=args.layers)
    topology = topologies.get_topology_desc(
        platform="tpu",
        topology_name=args.topology,
        chip_config_name="default",
        chips_per_host_bounds=tuple(int(x) for x in args.chips_per_host.split(",")),
        num_slices=1,
        wrap=(False, False, False),
    )
    devices = topology.devices
    data, fsdp, tensor = (int(x) for x in args.mesh.split(","))
    mesh = build_mesh(MeshConfig(data=data, fsdp=fsdp, tensor=tensor), devices)

    graphdef, shapes, axes = abstract_model(cfg)
    validate_param_layout(shapes, axes, mesh)
    validate_batch_layout(args.batch, args.microbatches, mesh)
    if args.eval:
        with activation_rules(mesh):
            programs = compile_generation(
                cfg, mesh, batch=args.batch, prompt_len=args.length, new_tokens=args.new_tokens
            )
        info = model_info(cfg, args.length)
        print(
            f"model {args.model}: {cfg.num_layers} layers, {info.num_params / 1e9:.2f}B params; bf16 parameters "
            f"and compute; generation: {args.batch} prompts x {args.length} tokens + {args.new_tokens} new tokens "
            f"(KV cache of {args.length + args.new_tokens} slots)"
        )
        print(
            f"TPU topology {args.topology}: {len(devices)} devices ({devices[0].device_kind}); mesh data={data} "
            f"fsdp={fsdp} tensor={tensor}"
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
    tx, schedule = build_optimizer(OptimConfig(), 1000)
    shardings = train_state_shardings(tx, shapes, axes, mesh)
    state = with_shardings(jax.eval_shape(lambda p: new_train_state(p, tx, 0), shapes), shardings)
    rows = args.batch // args.microbatches
    batch_spec = batch_sharding(mesh, microbatched=True)
    batch = {
        name: jax.ShapeDtypeStruct((args.microbatches, rows, args.length), dtype, sharding=batch_spec)
        for name, dtype in (
            ("input_ids", np.int32),
            ("targets", np.int32),
            ("loss_weights", np.float32),
            ("segment_ids", np.int32),
            ("positions", np.int32),
        )
    }
    step = make_train_step(graphdef, tx, schedule, mesh=mesh, state_shardings=shardings)
    with activation_rules(mesh):
        compiled = step.jitted.trace(state, batch).lower().compile()
    memory = compiled.memory_analysis()
    hlo = compiled.as_text()

    info = model_info(cfg, args.length)
    print(
        f"model {args.model}: {cfg.num_layers} layers, {info.num_params / 1e9:.2f}B params; bf16 compute, fp32 "
        f"master weights and AdamW; remat {cfg.remat_policy}; attention {cfg.attention_impl}"
    )
    print(
        f"TPU topology {args.topology}: {len(devices)} devices ({devices[0].device_kind}); mesh data={data} "
        f"fsdp={fsdp} tensor={tensor}; global batch {args.batch} x {args.length} in {args.microbatches} microbatch(es)"
    )
    kernels = hlo.count('custom_call_target="tpu_custom_call"')
    print(f"Pallas kernels in the compiled step: {kernels}")
    return _print_memory(memory, ("arguments (params, AdamW state, batch)", "outputs"))


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
