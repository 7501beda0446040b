"""Data statistics of experts for the data-aware merges: Gram matrices of linear layers' inputs
(RegMean) and diagonal Fishers (Fisher merging), gathered once per (model, data, settings) and
cached on disk (`store.py` gives the layout)."""

from speechmerge.datastats.gather import expert_statistics
from speechmerge.datastats.store import Statistics, StatisticsSettings

__all__ = ["Statistics", "StatisticsSettings", "expert_statistics"]
