"""`speechmerge search`: the optimiser finds a known optimum, the best recipe reproduces its model,
a killed search resumes, pruning stops trials early, bad search recipes are one line."""

from __future__ import annotations

import pytest
import torch
from conftest import load_state

from speechmerge.errors import SpeechmergeError
from speechmerge.merging.api import merge
from speechmerge.merging.memory import MemoryMerger
from speechmerge.recipe import load_recipe
from speechmerge.search.run import open_study, search
from speechmerge.search.spec import parse_search

NAME = "model.decoder.layers.1.fc1.weight"
OPTIMUM = 0.37


class DistanceObjective:
    """−‖θ(λ) − θ(λ*)‖² on one tensor, the same for every clip: maximal at the scale λ* of the target
    (task arithmetic is affine in λ, so the objective is a concave parabola in λ)."""

    def __init__(self, target: torch.Tensor, clips: int = 4, stop_after: int | None = None):
        self.target = target
        self.clips = list(range(clips))
        self.decoded = 0
        self.stop_after = stop_after
        self.calls = 0

    def decode(self, state, clips):
        self.calls += 1
        if self.stop_after is not None and self.calls > self.stop_after:
            raise KeyboardInterrupt  # the search is killed
        self.decoded += len(clips)
        distance = -float(((state[NAME].double() - self.target.double()) ** 2).sum())
        return [distance for _ in clips]

    def value(self, decoded):
        return sum(decoded) / len(decoded)


def _spec(family, tmp_path, **changes):
    base, experts = family
    data = {
        "merge": {
            "base": str(base),
            "experts": [str(e) for e in experts],
            "method": "task_arithmetic",
            "device": "cpu",
        },
        "space": {"params": {"scale": {"low": 0.05, "high": 1.0}}},
        "validation": ["val.jsonl"],
        "trials": 25,
        "output": str(tmp_path / "search"),
        **changes,
    }
    return parse_search(data, where="search.yaml", folder=tmp_path)


def _target(recipe, scale=OPTIMUM):
    return MemoryMerger(recipe.updated(params={"scale": scale}), include=r"model\.decoder\..*").merge()[NAME]


def test_finds_the_known_optimum_and_the_best_recipe_reproduces_the_trial(family, tmp_path):
    spec, recipe = _spec(family, tmp_path)
    result = search(spec, recipe, DistanceObjective(_target(recipe)))
    assert result.best_recipe.params["scale"] == pytest.approx(OPTIMUM, abs=0.05)
    written = load_recipe(result.recipe_path)
    out, _ = merge(written, show_progress=False)
    on_disk = load_state(out)
    trial_state = MemoryMerger(recipe, include=spec.include).merge(result.best_recipe)
    assert all(torch.equal(trial_state[n].float(), on_disk[n]) for n in trial_state)
    base = load_state(family[0])
    assert all(torch.equal(on_disk[n], base[n]) for n in on_disk if n.startswith("model.encoder."))


def test_a_killed_search_resumes_without_repeating_finished_trials(family, tmp_path):
    spec, recipe = _spec(family, tmp_path, trials=6)
    target = _target(recipe)
    with pytest.raises(KeyboardInterrupt):
        search(spec, recipe, DistanceObjective(target, stop_after=4))
    finished = [t for t in open_study(spec).trials if t.state.name == "COMPLETE"]
    assert len(finished) == 4
    objective = DistanceObjective(target)
    result = search(spec, recipe, objective)
    assert objective.calls == 2  # only the trials still missing
    assert sum(t["state"] == "COMPLETE" for t in result.trials) == 6


def test_pruning_stops_hopeless_trials_after_the_first_clips(family, tmp_path):
    spec, recipe = _spec(family, tmp_path, trials=12, pruning={"first_clips": 2})
    objective = DistanceObjective(_target(recipe), clips=10)
    result = search(spec, recipe, objective)
    pruned = [t for t in result.trials if t["state"] == "PRUNED"]
    complete = [t for t in result.trials if t["state"] == "COMPLETE"]
    assert pruned and all(t["decoded_clips"] == 2 for t in pruned)
    assert all(t["decoded_clips"] == 10 for t in complete)
    assert objective.decoded == 2 * len(pruned) + 10 * len(complete)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"space": {"params": {"scale": {"low": 1.0, "high": 0.5}}}}, "empty or inverted range"),
        ({"space": {"params": {"scale": {"low": 0.5, "high": 0.5}}}}, "empty or inverted range"),
        ({"trials": 0}, "trials"),
        ({"timeout": 0}, "timeout"),
        ({"space": {}}, "the space is empty"),
    ],
)
def test_bad_search_recipes_are_one_line(family, tmp_path, changes, message):
    with pytest.raises(SpeechmergeError, match=message) as caught:
        _spec(family, tmp_path, **changes)
    assert "\n" not in str(caught.value) and "search.yaml" in str(caught.value)


def test_a_parameter_the_method_does_not_have_is_refused(family, tmp_path):
    spec, recipe = _spec(family, tmp_path, space={"params": {"density": {"low": 0.1, "high": 0.9}}})
    with pytest.raises(SpeechmergeError, match="has no parameter 'density'") as caught:
        search(spec, recipe, DistanceObjective(_target(recipe)))
    assert "search.yaml" in str(caught.value)
