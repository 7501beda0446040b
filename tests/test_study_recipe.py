"""Study recipes: the grid, and every bad input fails in one line before any work starts."""

from __future__ import annotations

import pytest
from conftest import run_cli
from study_helpers import study_recipe, write_recipe


def _recipe(tmp_path, **changes) -> dict:
    return study_recipe(tmp_path, tmp_path / "base", **changes)


def test_lists_are_grid_axes_and_every_point_is_resolved_with_defaults(tmp_path):
    from speechmerge.merging.registry import get_method
    from speechmerge.study.recipe import load_study, method_grid

    methods = {
        "ties": {"density": [0.1, 0.2], "scale": [0.5, 1.0]},
        "soup": None,
        "task_arithmetic": {"scale": [0.5, 0.5]},
    }
    grid = method_grid(load_study(write_recipe(tmp_path / "s.yaml", _recipe(tmp_path, methods=methods))))
    defaults = get_method("ties").defaults()
    assert grid["ties"] == [{**defaults, "density": d, "scale": s} for d in (0.1, 0.2) for s in (0.5, 1.0)]
    assert grid["soup"] == [{}]
    assert grid["task_arithmetic"] == [{"scale": 0.5}]  # repeated points collapse


def test_all_methods_adds_every_method_at_its_defaults_data_aware_ones_included(tmp_path):
    from speechmerge.merging.registry import all_methods
    from speechmerge.study.recipe import load_study, method_grid

    grid = method_grid(
        load_study(
            write_recipe(
                tmp_path / "s.yaml", _recipe(tmp_path, all_methods=True, methods={"ties": {"density": [0.1, 0.3]}})
            )
        )
    )
    assert set(grid) == {m.name for m in all_methods()} and {"regmean", "fisher"} <= set(grid)
    assert all(points == [m.defaults()] for m in all_methods() if m.name != "ties" for points in [grid[m.name]])
    assert [p["density"] for p in grid["ties"]] == [0.1, 0.3]
    left = method_grid(
        load_study(write_recipe(tmp_path / "l.yaml", _recipe(tmp_path, all_methods=True, leave_out=["fisher"])))
    )
    assert set(left) == set(grid) - {"fisher"}


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"methods": {"ties": {"densty": 0.2}}}, "methods.ties.densty: unknown key for method 'ties'"),
        (
            {"methods": {"ties": {"density": [0.2, 1.5]}}},
            "methods.ties.density: Input should be less than or equal to 1",
        ),
        ({"methods": {"tiess": {}}}, "unknown merge method 'tiess'; did you mean ties"),
        ({"methods": {"ties": {"density": []}}}, "methods.ties.density: an empty list"),
        ({"method": {"ties": {}}}, "method: unknown key"),
        ({"methods": {}}, "no merge method"),
        ({"experts": {"training": {"stepz": 3}}}, "experts.training: Value error, stepz: unknown training setting"),
        ({"experts": {"training": {"steps": 0}}}, "steps: Input should be greater than or equal to 1"),
        (
            {"corpus": {"builtin": "multilingual", "manifests": {"train": ["a"], "validation": ["b"], "test": ["c"]}}},
            "not both or neither",
        ),
        ({"corpus": {"builtin": "multilingua"}}, "corpus.builtin: Input should be 'multilingual' or 'multidomain'"),
        ({"evaluation": {"batch_size": 0}}, "evaluation.batch_size: Input should be greater than or equal to 1"),
        ({"name": "my study"}, "name: String should match pattern"),
        ({"keep_models": "some"}, "keep_models: Input should be 'selected', 'all' or 'none'"),
        ({"data_statistics": {"utterances": 0}}, "data_statistics.utterances: Input should be greater than 0"),
        ({"data_statistics": {"utterance": 8}}, "data_statistics.utterance: unknown key"),
        ({"methods": {"regmean": {"alpha": 1.5}}}, "methods.regmean.alpha: Input should be less than or equal to 1"),
        (
            {"search": {"dare": {"space": {"weights": {"low": 0, "high": 1}}}}},
            "search.dare: dare is not in the study's grid",
        ),
        (
            {"search": {"ties": {"space": {"weights": {"low": 1.0, "high": 0.5}}}}},
            "search.ties: space.weights: Value error, empty or inverted range [1.0, 0.5]",
        ),
        (
            {"search": {"ties": {"space": {"params": {"drop": {"low": 0.1, "high": 0.5}}}}}},
            "search.ties: space.params.drop: method ties has no parameter 'drop'",
        ),
        (
            {"search": {"ties": {"space": {"weights": {"low": 0, "high": 1}}, "trials": 0}}},
            "search.ties: trials: Input should be greater than or equal to 1",
        ),
        (
            {"search": {"ties": {"space": {"weights": {"low": 0, "high": 1}}, "timeout": 0}}},
            "search.ties: timeout: Input should be greater than 0",
        ),
        (
            {"search": {"ties": {"space": {"weights": {"low": 0, "high": 1}}, "validation": ["v.jsonl"]}}},
            "search.ties.validation: the study sets it",
        ),
        ({"adamerging": {"steps": 0}}, "adamerging.steps: Input should be greater than or equal to 1"),
        (
            {
                "methods": {"regmean": {}},
                "search": {"regmean": {"space": {"params": {"alpha": {"low": 0, "high": 1}}}}},
            },
            "search.regmean: regmean reads data statistics",
        ),
        ({"all_methods": True, "leave_out": ["fishr"]}, "leave_out: unknown merge method 'fishr'; did you mean fisher"),
        ({"methods": {"ties": {}}, "adamerging": {}}, "adamerging: its test comparison is with task arithmetic"),
    ],
)
def test_a_bad_recipe_fails_in_one_line_naming_the_file_and_key_before_any_work(tmp_path, capsys, changes, expected):
    path = write_recipe(tmp_path / "bad.yaml", _recipe(tmp_path, **changes))
    code, _, err = run_cli(["study", path], capsys)
    assert code == 2
    assert err.count("\n") == 1 and str(path) in err and expected in err, err
    assert not (tmp_path / "study").exists()  # nothing was started: not even the study folder


def test_missing_or_unparsable_recipe_files_fail_in_one_line(tmp_path, capsys):
    code, _, err = run_cli(["study", tmp_path / "none.yaml"], capsys)
    assert code == 2 and "none.yaml: no such study recipe file" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    code, _, err = run_cli(["study", broken], capsys)
    assert code == 2 and "broken.yaml: not valid YAML" in err and err.count("\n") == 1
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    code, _, err = run_cli(["study", listed], capsys)
    assert code == 2 and "expected a mapping of study keys, found list" in err


def test_missing_manifests_and_bad_executor_options_fail_in_one_line(tmp_path, capsys):
    manifests = {
        "manifests": {"train": [str(tmp_path / "train.jsonl")], "validation": ["v.jsonl"], "test": ["t.jsonl"]}
    }
    path = write_recipe(tmp_path / "m.yaml", _recipe(tmp_path, corpus=manifests))
    code, _, err = run_cli(["study", path], capsys)
    assert code == 2 and "corpus.manifests.train: manifest" in err and "train.jsonl' not found" in err
    ok = write_recipe(tmp_path / "ok.yaml", _recipe(tmp_path))
    code, _, err = run_cli(["study", ok, "--executor", "dask"], capsys)
    assert code == 2 and "--executor 'dask': choose local or ray" in err
    code, _, err = run_cli(["study", ok, "--workers", "0"], capsys)
    assert code == 2 and "--workers 0: give at least 1" in err


@pytest.mark.parametrize(
    "name",
    [
        "demo",
        "multilingual",
        "multilingual-small",
        "multilingual-group1",
        "multilingual-group2",
        "multidomain",
        "multidomain-small",
        "multidomain-encoder",
        "regmean-fisher-small",
    ],
)
def test_every_bundled_study_recipe_validates_and_names_what_the_study_asks_for(name):
    from pathlib import Path

    from speechmerge.merging.registry import get_method
    from speechmerge.study.recipe import load_study, method_grid

    path = Path(__file__).resolve().parent.parent / "recipes" / f"{name}.yaml"
    recipe = load_study(path)
    assert recipe.name == name
    grid = method_grid(recipe)
    assert grid and all(points for points in grid.values())
    for method, points in grid.items():
        known = {p.name for p in get_method(method).params}
        assert all(set(point) <= known for point in points), method


def test_a_recipe_moved_to_another_output_still_names_its_file_in_errors(tmp_path):
    """`--output` rebuilds the recipe; an error found afterwards must still name the recipe file."""
    from speechmerge.errors import SpeechmergeError
    from speechmerge.study.recipe import method_grid, parse_study

    data = _recipe(tmp_path, methods={"ties": {"densty": 0.2}})
    recipe = parse_study(data, "my.yaml").with_output(str(tmp_path / "elsewhere"))
    assert recipe.source == "my.yaml" and recipe.folder() == tmp_path / "elsewhere"
    with pytest.raises(SpeechmergeError, match=r"^my\.yaml: methods\.ties\.densty: unknown key"):
        method_grid(recipe)


def test_a_study_decodes_greedily_with_the_torch_backend_unless_it_chooses_another():
    from types import SimpleNamespace

    from speechmerge.evaluation.options import DecodeOptions
    from speechmerge.study.plan import StudyPlan
    from speechmerge.study.recipe import EvaluationSpec

    def decode(**spec) -> DecodeOptions:
        plan = SimpleNamespace(recipe=SimpleNamespace(evaluation=EvaluationSpec(**spec)))
        return DecodeOptions(**StudyPlan.eval_options(plan)["decode"])

    assert (decode().backend, decode().weights) == ("torch", "float32")
    assert decode(beam_size=5).backend == "transformers"  # torch decodes greedily only
    chosen = decode(backend="ctranslate2", quantization="float32")
    assert (chosen.backend, chosen.weights) == ("ctranslate2", "float32")
    assert decode(backend="transformers").backend == "transformers"
