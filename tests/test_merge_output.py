"""What a user gets from `speechmerge merge`: a complete Hugging Face Whisper directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import load_state, make_family, run_cli

from speechmerge.merging.api import merge
from speechmerge.recipe import parse_recipe


@pytest.fixture(scope="module")
def family_with_processor(tmp_path_factory, builtin_base):
    """A tiny family whose base carries the built-in Whisper's processor and generation files."""
    from speechmerge.checkpoints.whisper import PROCESSOR_FILES

    base, experts = make_family(tmp_path_factory.mktemp("proc"), experts=2, seed=5)
    for name in PROCESSOR_FILES:
        if (builtin_base / name).is_file():
            shutil.copyfile(builtin_base / name, base / name)
    return base, experts


def write_recipe(path: Path, **data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_cli_merge_writes_a_complete_model_directory(tmp_path, family_with_processor, capsys):
    base, experts = family_with_processor
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        base=str(base),
        experts=[{"path": str(e), "name": f"lang{i}"} for i, e in enumerate(experts)],
        method="ties",
        params={"density": 0.3},
        output="merged",
    )
    code, _, err = run_cli(["merge", recipe], capsys)
    assert code == 0, err
    out = tmp_path / "merged"
    for name in (
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
        "speechmerge_recipe.yaml",
        "speechmerge_merge.json",
        "README.md",
    ):
        assert (out / name).is_file(), name
    # transformers 5 saves the feature extractor inside processor_config.json
    assert (out / "processor_config.json").is_file() or (out / "preprocessor_config.json").is_file()
    record = json.loads((out / "speechmerge_merge.json").read_text())
    assert [row["name"] for row in record["inputs"]] == ["base", "lang0", "lang1"]
    assert all(len(row["sha256"]) == 64 for row in record["inputs"])
    assert record["params"] == {"density": 0.3, "scale": 1.0, "topk": "global"}
    saved = yaml.safe_load((out / "speechmerge_recipe.yaml").read_text())
    assert saved["method"] == "ties" and saved["params"]["topk"] == "global"
    card = (out / "README.md").read_text()
    assert "TIES" in card and "lang1" in card and record["inputs"][1]["sha256"][:16] in card
    assert not list(tmp_path.glob(".merged.tmp-*"))


def test_output_reloads_generates_and_runs_in_the_asr_pipeline(tmp_path, family_with_processor):
    from transformers import WhisperForConditionalGeneration, pipeline

    base, experts = family_with_processor
    recipe = parse_recipe(
        {
            "base": str(base),
            "experts": [str(e) for e in experts],
            "method": "task_arithmetic",
            "output": str(tmp_path / "m"),
        }
    )
    out, _ = merge(recipe, show_progress=False)
    model = WhisperForConditionalGeneration.from_pretrained(out)
    state = load_state(out)
    for name, tensor in model.state_dict().items():
        expected = state["model.decoder.embed_tokens.weight"] if name == "proj_out.weight" else state[name]
        assert torch.equal(tensor, expected), name
    features = torch.randn(1, 80, 3000)
    tokens = model.generate(features, max_new_tokens=5, language="es", task="translate")
    assert tokens.shape[0] == 1
    asr = pipeline("automatic-speech-recognition", model=str(out), device="cpu")
    audio = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    result = asr({"raw": audio, "sampling_rate": 16000}, generate_kwargs={"max_new_tokens": 4, "language": "en"})
    assert isinstance(result["text"], str)


def test_small_shard_size_gives_an_index_that_transformers_loads(tmp_path, family):
    from transformers import WhisperForConditionalGeneration

    base, experts = family
    recipe = parse_recipe(
        {
            "base": str(base),
            "experts": [str(e) for e in experts],
            "method": "soup",
            "output": str(tmp_path / "sharded"),
            "shard_size": "1MB",
        }
    )
    out, _ = merge(recipe, show_progress=False)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and set(index["weight_map"].values()) == {s.name for s in shards}
    assert "proj_out.weight" not in index["weight_map"]
    model = WhisperForConditionalGeneration.from_pretrained(out)
    reference = load_state(out)
    assert torch.equal(
        model.state_dict()["model.decoder.layers.1.fc1.weight"], reference["model.decoder.layers.1.fc1.weight"]
    )


def test_sharded_input_and_float16_output(tmp_path, family):
    from transformers import WhisperForConditionalGeneration

    base, experts = family
    resharded = tmp_path / "base-sharded"
    WhisperForConditionalGeneration.from_pretrained(base).save_pretrained(resharded, max_shard_size="1MB")
    assert (resharded / "model.safetensors.index.json").is_file()
    recipe = parse_recipe(
        {
            "base": str(resharded),
            "experts": [str(e) for e in experts],
            "method": "task_arithmetic",
            "output": str(tmp_path / "o"),
            "output_dtype": "float16",
        }
    )
    out, _ = merge(recipe, show_progress=False)
    state = load_state(out)
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        assert handle.get_tensor("model.encoder.conv1.weight").dtype == torch.float16
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    expected = (
        load_state(base)["model.encoder.conv1.weight"]
        + sum(
            load_state(e)["model.encoder.conv1.weight"] - load_state(base)["model.encoder.conv1.weight"]
            for e in experts
        )
        / 3
    )
    torch.testing.assert_close(state["model.encoder.conv1.weight"], expected, atol=1e-3, rtol=1e-3)


def test_pytorch_bin_input_is_read_with_weights_only(tmp_path, family):
    base, experts = family
    bin_dir = tmp_path / "bin-expert"
    bin_dir.mkdir()
    state = load_state(experts[0])
    torch.save(state, bin_dir / "pytorch_model.bin")
    (bin_dir / "config.json").write_text((experts[0] / "config.json").read_text())
    recipe = parse_recipe(
        {
            "base": str(base),
            "experts": [str(bin_dir), str(experts[1])],
            "method": "task_arithmetic",
            "params": {"scale": 1.0},
            "output": str(tmp_path / "o"),
        }
    )
    out, _ = merge(recipe, show_progress=False)
    merged = load_state(out)
    b = load_state(base)
    name = "model.decoder.layers.0.fc1.weight"
    torch.testing.assert_close(merged[name], state[name] + load_state(experts[1])[name] - b[name])


def test_frozen_tensors_are_left_as_base_and_reported(tmp_path, frozen_family):
    base, experts = frozen_family
    recipe = parse_recipe(
        {
            "base": str(base),
            "experts": [str(e) for e in experts],
            "method": "task_arithmetic",
            "output": str(tmp_path / "o"),
        }
    )
    out, report = merge(recipe, show_progress=False)
    base_state, merged = load_state(base), load_state(out)
    encoder = [n for n in base_state if n.startswith("model.encoder.")]
    assert sorted(report.frozen) == sorted(encoder)
    assert all(torch.equal(merged[n], base_state[n]) for n in encoder)
    record = json.loads((out / "speechmerge_merge.json").read_text())
    assert sorted(record["tensors"]["frozen_left_as_base"]) == sorted(encoder)


def test_overrides_change_scale_and_keep_base(tmp_path, family):
    base, experts = family
    recipe = parse_recipe(
        {
            "base": str(base),
            "experts": [str(e) for e in experts],
            "method": "task_arithmetic",
            "params": {"scale": 1.0},
            "output": str(tmp_path / "o"),
            "overrides": [
                {"match": r"model\.encoder\..*", "params": {"scale": 0.25}},
                {"match": r"model\.decoder\.embed_positions\.weight", "keep": "base"},
                {"match": r"model\.decoder\.layers\.0\..*", "method": "soup"},
            ],
        }
    )
    out, report = merge(recipe, show_progress=False)
    b = load_state(base)
    es = [load_state(e) for e in experts]
    merged = load_state(out)
    n = "model.encoder.layers.1.fc1.weight"
    torch.testing.assert_close(merged[n], b[n] + 0.25 * sum(e[n] - b[n] for e in es))
    n = "model.decoder.layers.1.fc1.weight"
    torch.testing.assert_close(merged[n], b[n] + sum(e[n] - b[n] for e in es))
    assert torch.equal(merged["model.decoder.embed_positions.weight"], b["model.decoder.embed_positions.weight"])
    assert report.kept == ["model.decoder.embed_positions.weight"]
    n = "model.decoder.layers.0.fc2.weight"
    torch.testing.assert_close(merged[n], sum(e[n] for e in es) / 3)


def test_methods_command_lists_every_method(capsys):
    from speechmerge.merging.registry import all_methods

    code, out, _ = run_cli(["methods"], capsys)
    assert code == 0
    for method in all_methods():
        assert method.name in out
    code, out, _ = run_cli(["methods", "ties"], capsys)
    assert code == 0 and "density" in out and "0.2" in out


def test_docs_methods_md_is_generated_from_the_registry():
    from speechmerge.merging.describe import methods_markdown

    docs = Path(__file__).resolve().parents[1] / "docs" / "methods.md"
    assert docs.read_text() == methods_markdown(), "regenerate: speechmerge methods --markdown > docs/methods.md"
