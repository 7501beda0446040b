"""Shared fixtures: tiny random Whisper checkpoints made on disk in seconds.

The tiny models keep Whisper's real vocabulary (51,865 tokens) so that the real tokenizer
and processor work with them; everything else is small (d_model 16, 2 + 2 layers).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

TINY = dict(
    vocab_size=51865,
    d_model=16,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    encoder_ffn_dim=32,
    decoder_ffn_dim=32,
    max_source_positions=1500,
    max_target_positions=64,
    num_mel_bins=80,
)


def pytest_configure(config):
    """Under pytest-xdist, each worker's torch gets its share of the cores (no oversubscription)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Keep the tests' cache (hashes, corpora, predictions) out of the user's cache.

    The converted built-in model is expensive to rebuild, so tests share the user's copy of it
    (SPEECHMERGE_MODEL_CACHE, taken before SPEECHMERGE_CACHE is redirected)."""
    from speechmerge.checkpoints.converted import models_dir

    os.environ.setdefault("SPEECHMERGE_MODEL_CACHE", str(models_dir()))
    os.environ.setdefault("SPEECHMERGE_CACHE", str(tmp_path_factory.mktemp("speechmerge-cache")))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    yield


@pytest.fixture(scope="session")
def builtin_base() -> Path:
    """The built-in Whisper base as a Hugging Face directory (converted once per machine)."""
    from speechmerge.checkpoints.builtin import builtin_model_dir

    return builtin_model_dir("whisper-base")


def tiny_config(**changes):
    from transformers import WhisperConfig

    return WhisperConfig(**{**TINY, **changes})


def save_whisper(model, directory: Path, **kwargs) -> Path:
    model.save_pretrained(directory, **kwargs)
    return directory


def perturbed(base_state: dict, scale: float, seed: int, frozen: str | None = None) -> dict:
    """A fine-tune-like state: base + small Gaussian deltas (zero deltas where `frozen` matches)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in base_state.items():
        if frozen is not None and name.startswith(frozen):
            state[name] = tensor.clone()
        else:
            state[name] = tensor + scale * torch.randn(tensor.shape, generator=generator)
    return state


def make_family(
    root: Path, experts: int = 3, frozen: str | None = None, config_changes: dict | None = None, seed: int = 0
):
    """Write a base and `experts` fine-tune-like copies; return (base_dir, [expert_dirs])."""
    from transformers import WhisperForConditionalGeneration

    torch.manual_seed(seed)
    config = tiny_config(**(config_changes or {}))
    model = WhisperForConditionalGeneration(config).eval()
    base_dir = save_whisper(model, root / "base")
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    dirs = []
    for index in range(experts):
        state = perturbed(base_state, 0.01 * (index + 1), seed=seed * 100 + index + 1, frozen=frozen)
        model.load_state_dict(state)
        dirs.append(save_whisper(model, root / f"expert{index}"))
    return base_dir, dirs


def load_state(directory: Path) -> dict:
    """Every tensor of a saved model, as float32 (reference implementations use whole models)."""
    from safetensors.torch import load_file

    files = sorted(Path(directory).glob("*.safetensors"))
    state = {}
    for file in files:
        state.update({k: v.float() for k, v in load_file(file).items()})
    return state


@pytest.fixture(scope="session")
def family(tmp_path_factory):
    """Base + 3 experts, all tensors fine-tuned."""
    return make_family(tmp_path_factory.mktemp("family"), experts=3)


@pytest.fixture(scope="session")
def frozen_family(tmp_path_factory):
    """Base + 2 experts whose encoders were frozen (all-zero encoder task vectors)."""
    return make_family(tmp_path_factory.mktemp("frozen"), experts=2, frozen="model.encoder.", seed=1)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run `speechmerge ARGS` in-process as a user would; return (exit code, stdout, stderr)."""
    from speechmerge import cli

    capsys.readouterr()  # drop what fixtures printed before
    old_argv = sys.argv
    sys.argv = ["speechmerge", *map(str, args)]
    cli._state["debug"] = False
    code = 0
    try:
        cli.main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        sys.argv = old_argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The study tests' tiny base model (study_helpers.tiny_base), one per module; modules with
    a base of their own define their own `base` fixture, which takes precedence."""
    from study_helpers import tiny_base

    return tiny_base(tmp_path_factory.mktemp("study") / "base")


@pytest.fixture(scope="module")
def experts(tmp_path_factory, base):
    """Two given experts of `base` (study_helpers.given_experts), one set per module."""
    from study_helpers import given_experts

    return given_experts(tmp_path_factory.mktemp("experts"), base)
