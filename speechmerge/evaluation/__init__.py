"""Evaluation: decode any Whisper model on any manifests and score it as the papers do.

- `api.evaluate(model, data, options) -> EvalResult` (cached predictions, metrics per
  language/task/domain/split, macro averages, timings); `report` writes it as Markdown/CSV/JSON.
- `normalizers` (Whisper's English and basic normalisers), `metrics` (WER/CER with jiwer,
  BLEU/chrF with sacrebleu), `relative_scores` (normalised performance against experts and base).
- `backend` (the interface), `hf_backend` (transformers, the reference), `ct2_backend`
  (the model exported to CTranslate2), `decoding` (batching through the prediction cache).
- `prediction_cache`; features and the encoder-output cache are in `speechmerge.features`.
"""
