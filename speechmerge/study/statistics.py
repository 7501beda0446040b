"""Data statistics in studies: each expert's RegMean Gram matrices and Fisher, gathered on its own
training data (speechmerge.datastats), for the grid's data-aware methods.

An expert the study trains gathers on the utterances it trained on (its selection's train split,
less what training held out for validation when the selection had no validation split); a given
expert on the train split of the study's data that its labels select. `data_statistics:` in the
study recipe samples `utterances` of them (seeded). One statistics job per expert and statistic
kind (the `needs` of a data-aware method: gram for RegMean, fisher for Fisher merging) writes the
chosen utterances' manifest and fills the statistics cache; the merge jobs of that method depend
on it and find the statistics there (same model, data and settings: the same cache key).
"""

from __future__ import annotations

from pathlib import Path

from speechmerge.data.manifest import Utterance
from speechmerge.errors import SpeechmergeError
from speechmerge.study.data import ExpertGroup
from speechmerge.study.recipe import StudyRecipe


def training_utterances(group: ExpertGroup, recipe: StudyRecipe) -> list[Utterance]:
    """The utterances an expert's statistics are gathered on (see the module docstring); [] when none."""
    from speechmerge.training.selection import TRAIN_SPLITS, selected_utterances, training_data

    if group.path is not None:
        return [u for u in selected_utterances(group.selection) if u.split in TRAIN_SPLITS]
    config = recipe.experts.config()
    try:
        return training_data(group.selection, config.validation_fraction, config.seed).train
    except SpeechmergeError:
        return []


def data_aware_grid(
    grid: dict[str, list[dict]], recipe: StudyRecipe, experts: list[ExpertGroup]
) -> dict[str, list[Utterance]]:
    """Each expert's statistics utterances when the grid has a data-aware method ({} otherwise).

    When some expert has no training data, a data-aware method the recipe names is refused and
    those that only `all_methods` added are dropped from `grid` (in place)."""
    from speechmerge.merging.registry import get_method

    aware = [name for name in grid if get_method(name).needs]
    if not aware:
        return {}
    data = {group.name: training_utterances(group, recipe) for group in experts}
    lacking = next((group for group in experts if not data[group.name]), None)
    if lacking is None:
        return data
    named = next((name for name in aware if name in recipe.methods), None)
    if named is not None:
        raise SpeechmergeError(
            f"{recipe.source}: methods.{named}: {named} needs each expert's data statistics, but expert "
            f"{lacking.name} has no training utterance in the study's data ({lacking.selection.describe()}); "
            "give it languages/tasks/domains that the training data has, or leave the method out"
        )
    for name in aware:
        del grid[name]
    return {}


def write_statistics_manifest(folder: Path, expert: str, utterances: list[Utterance]) -> Path:
    """The manifest of an expert's statistics utterances, in the study folder (audio paths absolute)."""
    from speechmerge.data.manifest import write_manifest

    path = folder / "statistics" / f"{expert}.train.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(path, utterances)
    return path
