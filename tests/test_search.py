"""`speechmerge search`: the optimiser finds a known optimum, the best recipe reproduces its model,
a killed search resumes, pruning stops trials early, bad search recipes are one line."""

from __future__ import annotations

import math
import os
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import torch
from conftest import load_state

from speechmerge.data.manifest import Utterance
from speechmerge.errors import SpeechmergeError
from speechmerge.merging.api import merge
from speechmerge.merging.memory import MemoryMerger
from speechmerge.recipe import load_recipe
from speechmerge.search.comparison import best_grid_point, check_disjoint
from speechmerge.search.run import open_study, search
from speechmerge.search.scores import References, study_score
from speechmerge.search.spec import parse_search

NAME = "model.decoder.layers.1.fc1.weight"
OPTIMUM = 0.37


class DistanceObjective:
    """−‖θ(λ) − θ(λ*)‖² on one tensor, the same for every clip: maximal at the scale λ* of the target
    (task arithmetic is affine in λ, so the objective is a concave parabola in λ)."""

    def __init__(self, target: torch.Tensor, clips: int = 4, stop_after: int | None = None, delay: float = 0.0):
        self.target = target
        self.delay = delay
        self.clips = list(range(clips))
        self.decoded = 0
        self.stop_after = stop_after
        self.calls = 0

    def decode(self, state, clips):
        self.calls += 1
        if self.stop_after is not None and self.calls > self.stop_after:
            raise KeyboardInterrupt  # the search is killed
        self.decoded += len(clips)
        time.sleep(self.delay)
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


def test_a_grid_parameter_the_method_does_not_have_is_refused(family, tmp_path):
    spec, recipe = _spec(family, tmp_path, grid={"density": [0.1, 0.2]})
    with pytest.raises(SpeechmergeError, match="grid.density: method task_arithmetic has no parameter") as caught:
        search(spec, recipe, DistanceObjective(_target(recipe)))
    assert "\n" not in str(caught.value)


def test_an_empty_grid_list_is_one_line(family, tmp_path):
    with pytest.raises(SpeechmergeError, match="grid.scale is empty") as caught:
        _spec(family, tmp_path, grid={"scale": []})
    assert "\n" not in str(caught.value) and "search.yaml" in str(caught.value)


def test_the_best_grid_point_is_the_one_nearest_the_optimum(family, tmp_path):
    spec, recipe = _spec(family, tmp_path)
    merger = MemoryMerger(recipe, include=spec.include)
    best, value, points = best_grid_point(
        recipe, {"scale": [0.1, 0.35, 0.9]}, merger, DistanceObjective(_target(recipe))
    )
    assert best.params["scale"] == 0.35  # the objective is a parabola with its top at 0.37
    assert value == max(p["value"] for p in points) and len(points) == 3


def _utterance(id, audio, tmp_path):
    return ("m.jsonl", Utterance(id=id, audio=tmp_path / audio, text="x", language="es"))


def test_validation_sharing_an_utterance_with_test_is_refused(tmp_path):
    test = [_utterance("a", "a.wav", tmp_path), _utterance("b", "b.wav", tmp_path)]
    check_disjoint([_utterance("c", "c.wav", tmp_path)], test, "s.yaml")
    for clash in (_utterance("a", "other.wav", tmp_path), _utterance("z", "sub/../b.wav", tmp_path)):
        with pytest.raises(SpeechmergeError, match="also in the test data") as caught:
            check_disjoint([clash], test, "s.yaml")
        assert "\n" not in str(caught.value) and "s.yaml" in str(caught.value)


def test_the_objective_is_the_studies_normalised_macro_score():
    g = ("validation", "es", "transcribe", "general")
    t = ("validation", "es", "translate", "general")
    fr = ("validation", "fr", "transcribe", "general")  # no expert covers it: left out
    model = {(*g, "wer"): 0.2, (*g, "cer"): 0.1, (*t, "bleu"): 20.0, (*t, "chrf"): 40.0, (*fr, "wer"): 0.9}
    references = References(
        expert={(*g, "wer"): 0.1, (*g, "cer"): 0.05, (*t, "bleu"): 25.0, (*t, "chrf"): 50.0},
        base={(*g, "wer"): 0.5, (*g, "cer"): 0.3, (*t, "bleu"): 5.0, (*t, "chrf"): 20.0, (*fr, "wer"): 0.3},
    )
    vs_expert = ((1 - 0.2) / (1 - 0.1) + 20 / 25) / 2  # WER and BLEU, each against its expert
    gain_kept = ((0.5 - 0.2) / (0.5 - 0.1) + (20 - 5) / (25 - 5)) / 2
    assert study_score(model, references, "vs_expert") == pytest.approx(vs_expert)
    assert study_score(model, references, "gain_kept") == pytest.approx(gain_kept)
    raw = ((1 - 0.2) + 20 / 100 + (1 - 0.9)) / 3  # without references: the raw 1 - WER, BLEU / 100
    assert study_score(model, References(), "vs_expert") == pytest.approx(raw)
    assert study_score({}, references, "vs_expert") == -math.inf


def _overlapping(trials) -> bool:
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials if t.datetime_complete)
    return any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))


def test_local_workers_share_one_study(family, tmp_path):
    spec, recipe = _spec(family, tmp_path, trials=6, workers=2)
    factory = partial(DistanceObjective, _target(recipe), 4, None, 0.5)
    result = search(spec, recipe, DistanceObjective(_target(recipe)), make_objective=factory)
    complete = [t for t in open_study(spec).trials if t.state.name == "COMPLETE"]
    assert 6 <= len(complete) <= 7  # a worker may start one trial as the other starts the last
    assert _overlapping(complete)  # two trials ran at once
    assert result.best_value == max(t.value for t in complete)


def test_ray_workers_share_one_study(family, tmp_path):
    ray = pytest.importorskip("ray")
    spec, recipe = _spec(family, tmp_path, trials=4, workers=2, executor="ray")
    factory = partial(DistanceObjective, _target(recipe), 4, None, 0.5)
    path = os.pathsep.join([str(Path(__file__).parent), *sys.path])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        search(spec, recipe, DistanceObjective(_target(recipe)), make_objective=factory)
    finally:
        ray.shutdown()
    complete = [t for t in open_study(spec).trials if t.state.name == "COMPLETE"]
    assert 4 <= len(complete) <= 5 and _overlapping(complete)


def test_validation_clips_are_ordered_round_robin_over_groups(tmp_path):
    from speechmerge.search.objective import interleaved

    clips = [_utterance(f"es{i}", f"es{i}.wav", tmp_path) for i in range(3)]
    clips += [("m", Utterance(id=f"de{i}", audio=tmp_path / f"de{i}.wav", text="x", language="de")) for i in range(2)]
    assert [u.id for _, u in interleaved(clips)] == ["es0", "de0", "es1", "de1", "es2"]
