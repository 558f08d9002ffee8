"""Bad inputs found by trying them in a real ComfyUI, fixed in the core: a pickle named .safetensors, files of
other models (SD checkpoints, VAEs, LoRAs, ...) told apart from FrameBridge files, weights that are not
floating point or not finite, Mixed Inversion at its widget maximum of steps and with a NaN mixing ratio."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from framebridge_core.bivdiff.inversion import (
    LADDERS, check_mixing_ratio, ddim_timesteps, inversion_ladder, mix_latents,
)
from framebridge_core.checkpoints import (
    FOREIGN_KINDS, check_weight_values, foreign_kind, load_state_dict, load_weights_strict,
)
from framebridge_core.errors import CheckpointError, ConfigError
from framebridge_core.vp import scaled_linear_alphas_cumprod


# ------------------------------------------------------------------------------ a pickle named .safetensors


class _Touch:
    """Unpickling this calls os.system to create a marker file: the code-execution test object."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_a_code_pickle_named_safetensors_is_refused_unread(tmp_path, protocol):
    marker = tmp_path / "ran"
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"w": _Touch(marker)}, protocol=protocol))
    with pytest.raises(CheckpointError) as err:
        load_state_dict(path)
    msg = str(err.value)
    assert "'model.safetensors'" in msg and "named .safetensors" in msg and "Python pickle" in msg
    assert "rename it to .pt" in msg and "weights_only=True" in msg
    assert not marker.exists()


def test_a_torch_zip_named_safetensors_is_refused_and_read_under_pt(tmp_path):
    path = tmp_path / "weights.safetensors"
    torch.save({"ema": {"a.weight": torch.ones(2, 2)}}, path)
    with pytest.raises(CheckpointError, match=r"'weights.safetensors' is named \.safetensors but holds a PyTorch "
                                              r"checkpoint \(a zip of pickles"):
        load_state_dict(path)
    renamed = tmp_path / "weights.pt"
    path.rename(renamed)
    sd, meta = load_state_dict(renamed)
    assert meta["format"] == "torch" and torch.equal(sd["a.weight"], torch.ones(2, 2))


def test_other_bytes_named_safetensors_name_the_header_size(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match=r"'junk.safetensors' is named \.safetensors but holds not the "
                                              r"safetensors format \(its first 8 bytes give a \d+-byte header in a "
                                              r"64-byte file\)"):
        load_state_dict(path)


def test_a_truncated_real_safetensors_is_still_reported_as_truncated(tmp_path):
    full = tmp_path / "full.safetensors"
    save_file({"a": torch.zeros(64, 64)}, str(full))
    data = full.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_state_dict(cut)


# ------------------------------------------------------------------------------ files of other models


def _keys(*names):
    return {n: torch.zeros(1) for n in names}


@pytest.mark.parametrize("keys, kind", [
    (_keys("model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.encoder.conv_in.weight",
           "cond_stage_model.transformer.text_model.embeddings.position_ids"), "sd"),
    (_keys("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.label_emb.0.0.weight",
           "conditioner.embedders.0.transformer.text_model.embeddings.position_ids"), "sdxl"),
    (_keys("input_blocks.0.0.weight", "time_embed.0.weight", "out.2.weight"), "sd_unet"),
    (_keys("conv_in.weight", "down_blocks.0.resnets.0.conv1.weight", "up_blocks.0.resnets.0.conv1.weight"), "sd_unet"),
    (_keys("control_model.input_hint_block.0.weight", "control_model.zero_convs.0.0.weight"), "controlnet"),
    (_keys("lora_unet_down_blocks_0.lora_up.weight", "lora_unet_down_blocks_0.lora_down.weight"), "lora"),
    (_keys("encoder.conv_in.weight", "decoder.conv_in.weight", "quant_conv.weight"), "vae"),
    (_keys("encoder.conv_in.conv.weight", "decoder.conv_in.conv.weight"), "cogvideox_vae"),
    (_keys("text_model.encoder.layers.0.mlp.fc1.weight"), "text_encoder"),
    (_keys("encoder.block.0.layer.0.SelfAttention.q.weight", "shared.weight"), "text_encoder"),
])
def test_files_of_other_models_are_told_apart(keys, kind):
    assert foreign_kind(keys) == kind
    what, loader = FOREIGN_KINDS[kind]
    assert what.startswith(("a ", "the ")) and "'" in loader


@pytest.mark.parametrize("keys", [
    _keys("x_embedder.proj.weight", "pos_embed", "temp_embed"),  # Latte
    _keys("model.diffusion_model.input_blocks.0.0.weight",
          "model.diffusion_model.input_blocks.1.2.temopral_conv.conv1.0.weight"),  # VideoCrafter
    _keys("conv_in.weight", "transformer_in.proj_in.weight", "down_blocks.0.temp_convs.0.conv1.2.weight",
          "down_blocks.0.resnets.0.conv1.weight"),  # ModelScope
])
def test_framebridge_and_bivdiff_files_are_not_called_foreign(keys):
    assert foreign_kind(keys) is None


# ------------------------------------------------------------------------------ weights that cannot be right


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.int32])
def test_non_floating_weights_are_refused_naming_the_key(dtype):
    net = torch.nn.Linear(3, 2)
    sd = {"weight": torch.ones(2, 3, dtype=dtype), "bias": torch.zeros(2)}
    with pytest.raises(CheckpointError) as err:
        load_weights_strict(net, sd, "test network")
    msg = str(err.value)
    assert "weight" in msg and str(dtype).replace("torch.", "") in msg and "floating-point" in msg
    assert torch.isfinite(net.weight).all()  # nothing was loaded


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_all_nan_or_inf_weights_are_refused(bad):
    net = torch.nn.Linear(3, 2)
    sd = {"weight": torch.full((2, 3), bad), "bias": torch.zeros(2)}
    with pytest.raises(CheckpointError, match=r"weight holds NaN or infinite values.*Re-download"):
        check_weight_values(sd, net.state_dict(), "test network")


def test_fp16_and_bf16_weights_pass():
    net = torch.nn.Linear(3, 2)
    for dtype in (torch.float16, torch.bfloat16):
        check_weight_values({k: v.to(dtype) for k, v in net.state_dict().items()}, net.state_dict(), "net")


# ------------------------------------------------------------------------------ Mixed Inversion


def test_every_allowed_step_count_gives_a_ladder_inside_the_table():
    table = scaled_linear_alphas_cumprod().shape[0]
    for steps in range(1, 1001):
        ts = ddim_timesteps(steps)
        assert len(ts) == steps and len(set(ts)) == steps and max(ts) < table and min(ts) >= 0, steps
        for mode in LADDERS:
            lad = inversion_ladder(steps, mode)
            assert len(lad) == steps and max(lad.timesteps) < table


def test_the_offset_is_kept_where_it_fits():
    assert ddim_timesteps(50)[:2] == [981, 961] and ddim_timesteps(50)[-1] == 1
    assert ddim_timesteps(500)[0] == 999 and ddim_timesteps(1000)[0] == 999 and ddim_timesteps(1000)[-1] == 0


@pytest.mark.parametrize("steps", [0, -3, 1001])
def test_step_counts_outside_the_table_are_refused(steps):
    with pytest.raises(ConfigError, match=rf"steps={steps} is outside 1\.\.1000"):
        ddim_timesteps(steps)


@pytest.mark.parametrize("ratio", [float("nan"), float("inf"), -0.5, 1.5])
def test_a_mixing_ratio_outside_0_1_is_refused(ratio):
    with pytest.raises(ConfigError, match=rf"mixing_ratio={ratio} is outside \[0, 1\]"):
        check_mixing_ratio(ratio)
    with pytest.raises(ConfigError):
        mix_latents(torch.zeros(1), torch.zeros(1), ratio)
