"""PEFT LoRA experts become dense checkpoints equal to PEFT's own merge_and_unload()."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_config

from speechmerge.errors import SpeechmergeError

peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from transformers import WhisperForConditionalGeneration

    torch.manual_seed(11)
    directory = tmp_path_factory.mktemp("lora") / "base"
    WhisperForConditionalGeneration(tiny_config()).save_pretrained(directory)
    return directory


def _adapter(base_dir, directory, **options):
    from transformers import WhisperForConditionalGeneration

    torch.manual_seed(12)
    model = WhisperForConditionalGeneration.from_pretrained(base_dir)
    config = peft.LoraConfig(init_lora_weights=False, **options)  # random B, so the update is not zero
    peft.get_peft_model(model, config).save_pretrained(directory)
    return directory


def _peft_merged(base_dir, adapter_dir) -> dict:
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(base_dir)
    return peft.PeftModel.from_pretrained(model, adapter_dir).merge_and_unload().state_dict()


def _expert(base_dir, adapter_dir):
    from speechmerge.checkpoints.resolve import open_checkpoint

    return open_checkpoint(adapter_dir, base=open_checkpoint(base_dir))


OPTIONS = {
    "plain": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "fc1"]),
    "rslora-patterns": dict(
        r=4,
        lora_alpha=8,
        use_rslora=True,
        target_modules=["q_proj", "v_proj", "fc1", "out_proj"],
        rank_pattern={"fc1": 2, "encoder.layers.1.self_attn.q_proj": 6},
        alpha_pattern={"v_proj": 3},
    ),
    "conv-embedding-saved": dict(
        r=2,
        lora_alpha=4,
        target_modules=["conv1", "embed_tokens", "k_proj"],
        modules_to_save=["model.encoder.layer_norm"],
    ),
}


@pytest.mark.parametrize("variant", sorted(OPTIONS))
def test_lora_expert_equals_peft_merge_and_unload(base, tmp_path, variant):
    adapter = _adapter(base, tmp_path / "adapter", **OPTIONS[variant])
    expert, reference = _expert(base, adapter), _peft_merged(base, adapter)
    changed = 0
    for name in expert.names():
        ours = expert.get(name)
        assert ours.shape == expert.shape(name) and ours.dtype == expert.dtype(name)
        torch.testing.assert_close(ours, reference[name], rtol=0, atol=1e-6, msg=name)
        changed += not torch.equal(ours, expert.base.get(name))
    assert changed == len(expert._modules)  # every adapted tensor moved, nothing else did


def test_scaling_follows_rank_and_alpha_patterns(base, tmp_path):
    adapter = _adapter(base, tmp_path / "adapter", **OPTIONS["rslora-patterns"])
    expert = _expert(base, adapter)
    q1 = "model.encoder.layers.1.self_attn.q_proj.weight"
    assert expert.scaling(q1, 6) == pytest.approx(8 / math.sqrt(6))
    assert expert.scaling("model.decoder.layers.0.encoder_attn.v_proj.weight", 4) == pytest.approx(3 / 2)
    assert expert.delta(q1).shape == (16, 16)
    assert expert.delta("model.encoder.layers.0.fc2.weight") is None


def test_fan_in_fan_out_transposes_the_update(base, tmp_path):
    adapter = _adapter(base, tmp_path / "adapter", r=2, lora_alpha=2, target_modules=["q_proj"])
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "fan_in_fan_out": True}))
    expert = _expert(base, adapter)
    name = "model.encoder.layers.0.self_attn.q_proj.weight"
    prefix = "base_model.model." + name.removesuffix(".weight")
    a, b = expert._tensor(f"{prefix}.lora_A.weight"), expert._tensor(f"{prefix}.lora_B.weight")
    torch.testing.assert_close(expert.get(name), expert.base.get(name) + (b @ a).T, rtol=0, atol=1e-7)


def test_fp16_base_keeps_the_update_in_float32(base, tmp_path):
    from transformers import WhisperForConditionalGeneration

    half = tmp_path / "half"
    WhisperForConditionalGeneration.from_pretrained(base).half().save_pretrained(half)
    adapter = _adapter(base, tmp_path / "adapter", r=2, lora_alpha=2, target_modules=["q_proj"])
    expert = _expert(half, adapter)
    name = "model.encoder.layers.0.self_attn.q_proj.weight"
    assert expert.dtype(name) == torch.float32 and expert.get(name).dtype == torch.float32
    assert expert.dtype("model.encoder.layers.0.fc1.weight") == torch.float16
    # float32 rounding of base + delta only (~|w| * 2**-24); float16 would lose ~|w| * 2**-11 ≈ 1e-5.
    torch.testing.assert_close(expert.get(name) - expert.base.get(name).float(), expert.delta(name), rtol=0, atol=1e-7)


def test_adapter_for_another_base_is_refused(base, tmp_path):
    from transformers import WhisperForConditionalGeneration

    other = tmp_path / "wider"
    WhisperForConditionalGeneration(tiny_config(d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64)).save_pretrained(
        other
    )
    adapter = _adapter(base, tmp_path / "adapter", r=2, lora_alpha=2, target_modules=["q_proj"])
    with pytest.raises(SpeechmergeError) as caught:
        _expert(other, adapter)
    message = str(caught.value)
    assert "(32, 32) tensor by a (16, 16) update" in message and "another base model" in message and "\n" not in message


@pytest.mark.parametrize(
    "change, expected",
    [({"use_dora": True}, "DoRA"), ({"peft_type": "IA3"}, "LoRA adapters only"), ({"lora_bias": True}, "lora_bias")],
)
def test_adapters_that_are_not_plain_lora_are_refused(base, tmp_path, change, expected):
    adapter = _adapter(base, tmp_path / "adapter", r=2, lora_alpha=2, target_modules=["q_proj"])
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(SpeechmergeError, match=expected):
        _expert(base, adapter)


def test_merging_a_lora_expert_alone_with_task_arithmetic_gives_peft_merged_model(base, tmp_path):
    from safetensors.torch import load_file

    from speechmerge.merging.api import merge
    from speechmerge.recipe import MergeRecipe

    adapter = _adapter(base, tmp_path / "adapter", **OPTIONS["plain"])
    recipe = MergeRecipe(
        base=str(base), experts=[str(adapter)], method="task_arithmetic", params={"scale": 1.0}, device="cpu"
    )
    output, _ = merge(recipe, output=tmp_path / "merged", show_progress=False)
    merged, reference = load_file(output / "model.safetensors"), _peft_merged(base, adapter)
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, reference[name], rtol=0, atol=1e-6, msg=name)
