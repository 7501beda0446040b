"""The supervised objective: validation clips decoded greedily by the base model carrying each
trial's merged tensors, scored as the evaluator scores them.

The model and its processor are loaded once; each trial copies its merged tensors in
(`load_state_dict(strict=False)`, nothing written). When no encoder tensor is merged, each
clip's encoder output is computed once and reused by every trial. The value is the mean over
(language, task, domain) groups of the primary metric as a score — 1 − WER (else CER) for
transcription, BLEU/100 (else chrF/100) for translation — or, for `objective: METRIC`, the
mean of that metric over groups, negated for the error rates (higher is always better).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from speechmerge.data.manifest import Utterance
from speechmerge.evaluation.prediction_cache import CachedDecode
from speechmerge.evaluation.scoring import Prediction, group_scores, score_prediction
from speechmerge.study.selection import primary_metric

RATES = ("wer", "cer")


def group_value(task: str, values: dict[str, float], objective: str) -> float | None:
    """One group's score, higher better (see the module docstring)."""
    metric = primary_metric(task, values) if objective == "primary" else objective
    if metric is None or values.get(metric) is None:
        return None
    value = values[metric]
    if objective == "primary":
        return 1.0 - value if metric in RATES else value / 100.0
    return -value if metric in RATES else value


def objective_value(predictions: Sequence[Prediction], objective: str) -> float:
    groups, _ = group_scores(predictions)
    values = [
        group_value(
            g.task, {m: g.metric(m) for m in ("wer", "cer", "bleu", "chrf") if g.metric(m) is not None}, objective
        )
        for g in groups
    ]
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else float("-inf")


class WhisperObjective:
    """Greedy decoding of `clips` (utterances) with merged tensors, scored by `objective`."""

    def __init__(
        self,
        model_dir: Path,
        clips: Sequence[tuple[str, Utterance]],
        objective: str = "primary",
        encoder_shared: bool = True,
        max_new_tokens: int = 64,
        batch_size: int = 8,
    ):
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.model = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
        self.processor = WhisperProcessor.from_pretrained(model_dir)
        self.clips = list(clips)
        self.objective = objective
        self.encoder_shared = encoder_shared
        self.max_new_tokens = min(max_new_tokens, self.model.config.max_target_positions // 2)
        self.batch_size = batch_size
        self.encoded: dict[str, torch.Tensor] = {}
        self.decoded_clips = 0

    def _features(self, utterance: Utterance) -> torch.Tensor:
        from speechmerge.data.audio import load_audio

        samples = load_audio(utterance.audio)
        return self.processor.feature_extractor(samples, sampling_rate=16000, return_tensors="pt").input_features

    @torch.no_grad()
    def _encode(self, utterance: Utterance) -> torch.Tensor:
        key = str(utterance.audio)
        if self.encoder_shared and key in self.encoded:
            return self.encoded[key]
        hidden = self.model.model.encoder(self._features(utterance)).last_hidden_state
        if self.encoder_shared:
            self.encoded[key] = hidden
        return hidden

    @torch.no_grad()
    def _greedy(self, hidden: torch.Tensor, language: str, task: str) -> list[str]:
        from transformers.modeling_outputs import BaseModelOutput

        tokens = self.model.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
            language=language,
            task=task,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            num_beams=1,
        )
        return self.processor.batch_decode(tokens, skip_special_tokens=True)

    def decode(self, state: dict[str, torch.Tensor], clips: Sequence[tuple[str, Utterance]]) -> list[Prediction]:
        self.model.load_state_dict(state, strict=False)
        out = []
        groups: dict[tuple[str, str], list[tuple[str, Utterance]]] = {}
        for item in clips:
            groups.setdefault((item[1].language, item[1].task), []).append(item)
        for (language, task), items in groups.items():
            for start in range(0, len(items), self.batch_size):
                batch = items[start : start + self.batch_size]
                hidden = torch.cat([self._encode(u) for _, u in batch])
                texts = self._greedy(hidden, language, task)
                for (manifest, utterance), text in zip(batch, texts):
                    decoded = CachedDecode(text=text.strip(), language=language)
                    out.append(score_prediction(utterance, manifest, decoded, cer=False))
        self.decoded_clips += len(out)
        return out

    def value(self, decoded: list[Prediction]) -> float:
        return objective_value(decoded, self.objective)
