"""The supervised objective: validation clips decoded greedily by the base model carrying each
trial's merged tensors (as the torch evaluation backend decodes), scored as the studies score a model on validation.

The model and its processor are loaded once; each trial copies its merged tensors in
(`load_state_dict(strict=False)`, nothing written). When no encoder tensor is merged, the
encoder outputs come from the project's encoder-output cache (`speechmerge.features.encoder_cache`,
filled once for every clip, shared with studies and evaluations of the same base) and each trial
runs only the decoder (with `encoder_window: audio`, cross-attending only to the positions that
hold the batch's audio plus a margin, as `speechmerge eval --encoder-window audio`). `objective: primary` is the study's selection score
(`speechmerge.search.scores`: the macro mean over groups of the primary metric normalised by each
group's expert and the base, `select_by` vs_expert or gain_kept); `objective: METRIC` is the
macro mean of that metric over groups, negated for the error rates (higher is always better).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from speechmerge.data.manifest import Utterance
from speechmerge.evaluation.prediction_cache import CachedDecode
from speechmerge.evaluation.scoring import Prediction, group_scores, score_prediction
from speechmerge.search.decoding import Greedy
from speechmerge.search.scores import References, covered_groups, covering_expert, group_values, study_score

RATES = ("wer", "cer")


def metric_value(predictions: Sequence[Prediction], metric: str) -> float:
    """The macro mean of one metric over the groups that have it, negated for error rates."""
    groups, _ = group_scores(predictions)
    present = [g.metric(metric) for g in groups if g.metric(metric) is not None]
    if not present:
        return -math.inf
    mean = sum(present) / len(present)
    return -mean if metric in RATES else mean


def interleaved(clips: Sequence[tuple[str, Utterance]]) -> list[tuple[str, Utterance]]:
    """The clips round-robin over their (language, task, domain) groups, so that any first slice
    (the pruner's `first_clips`) holds every group in equal parts."""
    groups: dict[tuple[str, str, str], list] = {}
    for item in clips:
        groups.setdefault(_labels(item[1]), []).append(item)
    rounds = max((len(g) for g in groups.values()), default=0)
    return [g[i] for i in range(rounds) for g in groups.values() if i < len(g)]


class WhisperObjective:
    """Greedy decoding of `clips` ((manifest, utterance) pairs) with merged tensors, scored by `objective`."""

    def __init__(
        self,
        model_dir: Path,
        clips: Sequence[tuple[str, Utterance]],
        objective: str = "primary",
        criterion: str = "vs_expert",
        encoder_shared: bool = True,
        max_new_tokens: int = 64,
        batch_size: int = 8,
        encoder_window: str = "full",
    ):
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        from speechmerge.features.log_mel import LogMel

        self.model_dir = Path(model_dir)
        self.model = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
        self.processor = WhisperProcessor.from_pretrained(model_dir)
        self.log_mel = LogMel(model_dir)
        self.clips = interleaved(clips)
        self.objective, self.criterion = objective, criterion
        self.encoder_shared = encoder_shared
        self.max_new_tokens = min(max_new_tokens, self.model.config.max_target_positions // 2)
        self.batch_size = batch_size
        self.encoder_window = encoder_window
        self.references = References()
        self.decoded_clips = 0
        self._encoder_side = self._cached_encoder() if encoder_shared else None
        self.greedy = Greedy(self.model, self.processor.tokenizer, self.max_new_tokens)

    def _cached_encoder(self):
        from speechmerge.training.inputs import cached_encoder_outputs

        utterances = [u for _, u in self.clips]
        return cached_encoder_outputs(self.model.model.encoder, self.log_mel, self.model_dir, utterances, 8, "cpu")

    @torch.no_grad()
    def _encode(self, batch: list[Utterance]) -> torch.Tensor:
        from speechmerge.evaluation.decoding import audio_window

        if self._encoder_side is not None:
            encoded = self._encoder_side(batch)["encoder_outputs"][0]
        else:
            encoded = self.model.model.encoder(
                torch.from_numpy(self.log_mel([u.audio for u in batch]))
            ).last_hidden_state
        if self.encoder_window == "audio":
            encoded = encoded[:, : audio_window([u.audio for u in batch], encoded.shape[1])]
        return encoded

    def decode(self, state: dict[str, torch.Tensor], clips: Sequence[tuple[str, Utterance]]) -> list[Prediction]:
        """The predictions of the base model carrying `state` on `clips`."""
        self.model.load_state_dict(state, strict=False)
        out = []
        groups: dict[tuple[str, str], list[tuple[str, Utterance]]] = {}
        for item in clips:
            groups.setdefault((item[1].language, item[1].task), []).append(item)
        for (language, task), items in groups.items():
            for start in range(0, len(items), self.batch_size):
                batch = items[start : start + self.batch_size]
                texts = self.greedy.texts(self._encode([u for _, u in batch]), language, task)
                for (manifest, utterance), text in zip(batch, texts):
                    decoded = CachedDecode(text=text.strip(), language=language)
                    out.append(score_prediction(utterance, manifest, decoded, cer=False))
        self.decoded_clips += len(out)
        return out

    def score_references(self, base: dict[str, torch.Tensor], experts: Sequence[Path], expert_state) -> References:
        """Decode the validation clips with the base's tensors, and each group's clips with the
        tensors of its covering expert (`expert_state(index)`); keep them as `references`."""
        if self.objective != "primary":
            return self.references
        selections = [covered_groups(path) for path in experts]
        base_values = group_values(self.decode(base, self.clips))
        expert_values: dict = {}
        for index in range(len(experts)):
            mine = [c for c in self.clips if covering_expert(selections, *_labels(c[1])) == index]
            if mine:
                expert_values.update(group_values(self.decode(expert_state(index), mine)))
        self.references = References(expert_values, base_values)
        return self.references

    def value(self, decoded: list[Prediction]) -> float:
        if self.objective == "primary":
            return study_score(group_values(decoded), self.references, self.criterion)
        return metric_value(decoded, self.objective)


def _labels(utterance: Utterance) -> tuple[str, str, str]:
    return utterance.language, utterance.task, utterance.domain or "-"
