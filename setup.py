"""jaxtune: JAX/TPU-native instruction tuning for the DoIT and BELLE studies."""

from setuptools import find_packages, setup

# Pinned: versions verified together on Python 3.11 (see README, "Versions").
CORE = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "clu==0.0.12",
    "tensorflow-datasets==4.9.10",
    "array_record==0.8.6",
    "transformers==5.23.0",
    "tokenizers==0.23.3",
    "sentencepiece==0.2.3",
    "safetensors==0.8.0",
    "tensorboardX==2.6.5",
    "numpy==2.4.6",
    "PyYAML==6.0.3",
    "matplotlib==3.11.2",
    "scipy==1.17.1",  # jaxtune budget: the robust growth-curve fit (least_squares)
    "gcsfs==2026.10.1",  # gs:// paths (etils epath's backend; brings google-cloud-storage for TensorBoard events)
    "uvicorn==0.54.0",  # jaxtune serve: the ASGI server
    "starlette==1.10.0",  # jaxtune serve: the HTTP app
]
RAY = ["ray==2.60.0"]  # jaxtune sweep --ray: the grid's cells on a pool of slices (jaxtune/study/ray_sweep.py)
HF = ["torch==2.13.0+cpu"]  # the PyTorch reference model (tests, check-hf, legacy .bin checkpoints)
TEST = (
    HF
    + RAY
    + [
        "pytest==9.2.0",
        "pytest-timeout==2.4.0",
        "pytest-xdist==3.8.0",  # scripts/test.sh runs the suite in two processes (CI has two cores)
        "gcp-storage-emulator==2026.7.19",
        "ruff==0.17.5",
        "openai==3.51.0",  # the official client the serving tests talk to jaxtune serve with
        "aiohttp==3.14.5",  # benchmarks/serve.py's concurrent clients (also gcsfs's transport)
        "gguf==0.19.0",  # tests/convert/test_smollm2.py: transformers dequantizes the pretrained GGUF with it
        "accelerate==1.15.0",  # transformers' GGUF loading needs it
    ]
)

setup(
    name="jaxtune",
    version="0.1.0",
    description="Instruction-tuning research on JAX: LLaMA fine-tuning on TPU pods or GPUs, evaluated per ability",
    packages=find_packages(include=["jaxtune", "jaxtune.*"]),
    package_data={
        "jaxtune": [
            "demo/tokenizer/tokenizer.model",
            "demo/quickstart.yaml",
            "eval/suites/reference/*.csv",
            "eval/suites/reference/*.md",
        ]
    },
    python_requires=">=3.11",
    install_requires=CORE,
    extras_require={
        "hf": HF,
        "ray": RAY,
        "test": TEST,
        "tpu": ["jax[tpu]==0.10.2"],
        "gpu": ["jax[cuda12]==0.10.2"],
    },
    entry_points={"console_scripts": ["jaxtune=jaxtune.cli:main"]},
)
