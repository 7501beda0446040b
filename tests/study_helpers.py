"""Helpers for the study tests: a tiny base that decodes and trains, frozen-encoder experts, recipes."""

from __future__ import annotations

from pathlib import Path

import eval_models
import yaml

# Training labels of the tiny corpus' sentences need more than the evaluation helpers' 24 positions.
TRAINABLE = {**eval_models.TINY_DECODER, "max_target_positions": 64}
TRAINING = {
    "mode": "decoder",
    "steps": 2,
    "learning_rate": 1e-3,
    "batch_size": 2,
    "eval_every": 2,
    "patience": 0,
    "warmup_ratio": 0.0,
}


def tiny_base(directory: Path) -> Path:
    original = eval_models.TINY_DECODER
    eval_models.TINY_DECODER = TRAINABLE
    try:
        return eval_models.write_tiny_whisper(directory, seed=3)
    finally:
        eval_models.TINY_DECODER = original


def given_experts(root: Path, base: Path) -> list[dict]:
    """Two frozen-encoder experts of the tiny base, as a recipe's `experts.given`."""
    made = []
    for index, (task, scale) in enumerate((("transcribe", 0.02), ("translate", 0.04))):
        path = eval_models.write_tiny_whisper(
            root / f"expert-{task}", seed=10 + index, encoder_from=base, decoder_noise=scale
        )
        made.append(
            {"name": f"es-{task}", "path": str(path), "languages": ["es"], "tasks": [task], "domains": ["general"]}
        )
    return made


def study_recipe(folder: Path, base: Path, **changes) -> dict:
    """A tiny study: 3 methods, one of them with 2 settings, on the tiny built-in corpus."""
    recipe = {
        "name": "tiny",
        "base": str(base),
        "corpus": {"builtin": "multilingual", "size": "tiny", "languages": ["es"]},
        "experts": {"training": TRAINING},
        "methods": {"task_arithmetic": {"scale": [0.5, 1.0]}, "ties": {"density": 0.5}, "soup": {}},
        "evaluation": {"max_new_tokens": 4, "validation_utterances": 2, "test_utterances": 2},
        "output": str(folder / "study"),
    }
    recipe.update(changes)
    return recipe


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path
