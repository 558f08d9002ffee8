"""Checkpoint reading, family detection from keys/shapes, and error messages."""

import argparse
import json
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from framebridge_core import families
from framebridge_core.checkpoints import (
    FamilyDetector,
    FamilyInfo,
    load_state_dict,
    load_weights_strict,
    normalize_state_dict,
)
from framebridge_core.families import detect_family, load_model
from framebridge_core.families.latte.checkpoint import META_NUM_HEADS
from framebridge_core.errors import CheckpointError, FrameBridgeError
from framebridge_core.families.latte.network import (
    LatteConfig,
    LatteModel,
    LatteNeuralPrior,
    latte_s2_bridge,
    latte_s2_neural_prior,
)

FIX = Path(__file__).parent / "fixtures"
LAT = FIX / "latte"
TINY = dict(input_size=8, patch_size=2, out_channels=4, hidden_size=24, depth=4, num_heads=2,
            mlp_ratio=2.0, num_frames=4, num_classes=5)


def meta_state_dict(table_name: str) -> dict:
    table = json.loads((FIX / table_name).read_text())
    return {k: torch.empty(v, device="meta") for k, v in table.items()}


def small_latte(hidden=64, **kw) -> LatteModel:
    cfg = dict(input_size=4, patch_size=2, in_channels=4, out_channels=4, hidden_size=hidden,
               depth=2, num_heads=1, mlp_ratio=4.0, num_frames=2, num_classes=3)
    cfg.update(kw)
    torch.manual_seed(0)
    return LatteModel(LatteConfig(**cfg)).eval()


# ------------------------------------------------------------------------------ detection


def test_fixture_weights_detected_with_metadata_heads():
    sd, meta = load_state_dict(LAT / "weights_bridge4.safetensors")
    assert meta["format"] == "safetensors" and meta[META_NUM_HEADS] == "2"
    info = detect_family(sd, meta)
    assert info.name == "latte_bridge" and info.detector == "latte" and info.prefix == ""
    assert info.config == LatteConfig(in_channels=4, **TINY)
    assert any("metadata" in n for n in info.notes)

    sd8, meta8 = load_state_dict(LAT / "weights_bridge8.safetensors")
    cfg8 = detect_family(sd8, meta8).config
    assert (cfg8.in_channels, cfg8.out_channels, cfg8.prior_concat, cfg8.learn_sigma) == (8, 4, True, False)

    sdn, metan = load_state_dict(LAT / "weights_nwarp.safetensors")
    assert all(k.startswith("nwarp_model.") for k in sdn)
    info = detect_family(sdn, metan)
    assert info.name == "latte_neural_prior" and info.prefix == "nwarp_model."
    assert info.config == LatteConfig(in_channels=4, condition_type=None, has_timestep=False, **TINY)


@pytest.mark.parametrize("table,expected,name", [
    ("latte_keys_bridge4.json", latte_s2_bridge(4), "latte_bridge"),
    ("latte_keys_bridge8.json", latte_s2_bridge(8), "latte_bridge"),
    ("latte_keys_nwarp.json", latte_s2_neural_prior(), "latte_neural_prior"),
])
def test_official_full_size_layouts_detected_from_keys_only(table, expected, name):
    sd = meta_state_dict(table)
    info = detect_family(sd)  # no metadata: everything from keys and shapes
    assert info.name == name
    assert info.config == expected
    assert info.config.num_heads == 6 and "official Latte preset" in " ".join(info.notes)
    assert (info.config.input_size, info.config.num_frames, info.config.num_classes) == (32, 16, 101)


@pytest.mark.parametrize("prefix", ["module.", "model.", "module.model."])
def test_wrapper_prefixes_are_stripped(prefix):
    sd = {prefix + k: v for k, v in meta_state_dict("latte_keys_bridge8.json").items()}
    info = detect_family(sd)
    assert info.prefix == prefix and info.config == latte_s2_bridge(8)


def test_nwarp_checkpoint_with_extra_submodules_keeps_nwarp_part():
    sd = meta_state_dict("latte_keys_nwarp.json")
    sd["diffusion_model.x_embedder.proj.weight"] = torch.empty(384, 8, 2, 2, device="meta")
    clean, prefix, notes = normalize_state_dict(sd)
    assert prefix == "nwarp_model." and "x_embedder.proj.weight" in clean and len(clean) == 129
    assert "ignored 1 others" in notes[0]
    assert detect_family(sd).name == "latte_neural_prior"


def test_head_count_cannot_be_guessed_without_metadata():
    sd = load_file(str(LAT / "weights_bridge4.safetensors"))
    with pytest.raises(CheckpointError, match=r"head count.*hidden size 24.*framebridge\.num_heads"):
        detect_family(sd)


def test_unknown_family_lists_keys_looked_for():
    videocrafter_like = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 8, 3, 3),
        "model.diffusion_model.time_embed.0.weight": torch.zeros(1280, 320),
        "first_stage_model.encoder.conv_in.weight": torch.zeros(128, 3, 3, 3),
        "cond_stage_model.model.positional_embedding": torch.zeros(77, 1024),
    }
    with pytest.raises(CheckpointError, match="Unknown model family") as err:
        detect_family(videocrafter_like)
    msg = str(err.value)
    assert "x_embedder.proj.weight" in msg and "temp_embed" in msg  # what was looked for
    assert "model.diffusion_model.input_blocks.0.0.weight" in msg    # what was found
    assert isinstance(err.value, FrameBridgeError) and isinstance(err.value, ValueError)


def test_cross_attention_latte_is_refused():
    sd = meta_state_dict("latte_keys_bridge4.json")
    sd["cond_embedder.proj.weight"] = torch.empty(384, 4, 2, 2, device="meta")
    with pytest.raises(CheckpointError, match="cross-attention.*not supported"):
        detect_family(sd)


def test_missing_unexpected_and_misshaped_keys_are_named():
    sd = meta_state_dict("latte_keys_bridge4.json")
    del sd["blocks.3.mlp.fc2.bias"]
    sd["blocks.3.extra.weight"] = torch.empty(3, device="meta")
    sd["blocks.5.attn.proj.weight"] = torch.empty(384, 383, device="meta")
    with pytest.raises(CheckpointError) as err:
        detect_family(sd)
    msg = str(err.value)
    assert "1 missing key(s): blocks.3.mlp.fc2.bias" in msg
    assert "1 unexpected key(s): blocks.3.extra.weight" in msg
    assert "blocks.5.attn.proj.weight [384, 383] != [384, 384]" in msg

    model = LatteModel(LatteConfig(in_channels=4, **TINY))
    wrong = {k: v.float() for k, v in load_file(str(LAT / "weights_bridge8.safetensors")).items()}
    with pytest.raises(CheckpointError, match=r"x_embedder\.proj\.weight \[24, 8, 2, 2\] != \[24, 4, 2, 2\]"):
        load_weights_strict(model, wrong)


# ------------------------------------------------------------------------------ file layouts


@pytest.mark.parametrize("wrap,container", [
    (lambda sd: {"ema": sd}, "ema"),
    (lambda sd: {"model": sd}, "model"),
    (lambda sd: {"state_dict": sd, "epoch": 3}, "state_dict"),
    (lambda sd: {"model": {k: v * 0 for k, v in sd.items()}, "ema": sd}, "ema"),  # EMA preferred
    (lambda sd: dict(sd), None),
])
def test_torch_containers_unwrap(tmp_path, wrap, container):
    net = small_latte()
    sd = net.state_dict()
    path = tmp_path / "weights.ckpt"
    torch.save(wrap(sd), path)
    got, meta = load_state_dict(path)
    assert meta["format"] == "torch" and meta.get("container") == container
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)


def test_load_model_from_official_style_pt(tmp_path):
    net = small_latte()
    path = tmp_path / "0100000.pt"
    torch.save({"ema": {"module." + k: v for k, v in net.state_dict().items()}}, path)
    model, info = load_model(path)
    assert info.name == "latte_bridge" and info.prefix == "module."
    assert info.config == net.config.__class__(**{**net.config.to_dict(), "num_heads": 1})
    assert "guessed" in " ".join(info.notes)
    x = torch.randn(2, 3, 4, 4, 4)
    with torch.no_grad():
        assert torch.equal(model(x, torch.tensor([5, 900]), torch.tensor([0, 3])),
                           net(x, torch.tensor([5, 900]), torch.tensor([0, 3])))
    assert not model.training


@torch.no_grad()
def test_load_model_fixture_parity_and_hooks():
    fw = load_file(str(LAT / "forward.safetensors"))
    model, info = load_model(LAT / "weights_bridge4.safetensors")
    assert isinstance(model, LatteModel)
    out = model(fw["bridge4.x"], fw["bridge4.t"], fw["bridge4.y"])
    assert (out - fw["bridge4.out"]).abs().max().item() < 1e-5

    prior, info = load_model(LAT / "weights_nwarp.safetensors")
    assert isinstance(prior, LatteNeuralPrior) and info.name == "latte_neural_prior"
    assert (prior(fw["nwarp.x"], fw["nwarp.y"]) - fw["nwarp.out"]).abs().max().item() < 1e-5

    made = []

    class Linear(nn.Linear):
        def __init__(self, *a, **k):
            made.append(k.get("dtype"))
            super().__init__(*a, **k)

    ops = types.SimpleNamespace(Linear=Linear, Conv2d=nn.Conv2d, LayerNorm=nn.LayerNorm, Embedding=nn.Embedding)
    m16, _ = load_model(LAT / "weights_bridge8.safetensors", operations=ops, dtype=torch.bfloat16)
    assert made and set(made) == {torch.bfloat16}
    assert m16.x_embedder.proj.weight.dtype == torch.bfloat16


def test_format_is_sniffed_from_content(tmp_path):
    src = (LAT / "weights_bridge4.safetensors").read_bytes()
    odd = tmp_path / "weights.pt"  # a safetensors file with a torch suffix
    odd.write_bytes(src)
    sd, meta = load_state_dict(odd)
    assert meta["format"] == "safetensors" and "pos_embed" in sd


# ------------------------------------------------------------------------------ bad files


def test_truncated_safetensors(tmp_path):
    src = (LAT / "weights_bridge4.safetensors").read_bytes()
    bad = tmp_path / "framebridge_latte.safetensors"
    bad.write_bytes(src[: len(src) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_state_dict(bad)
    msg = str(err.value)
    assert "framebridge_latte.safetensors" in msg and "Re-download" in msg and "KB" in msg
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(bad)


@pytest.mark.parametrize("name,cut", [("a.pt", 0.5), ("b.pth", 0.97), ("c.ckpt", 0.1)])
def test_truncated_torch_zip(tmp_path, name, cut):
    full = tmp_path / "full.pt"
    torch.save({"ema": small_latte().state_dict()}, full)
    data = full.read_bytes()
    bad = tmp_path / name
    bad.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(CheckpointError, match=r"truncated or corrupt.*Re-download"):
        load_state_dict(bad)


def test_garbage_empty_and_missing_files(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_state_dict(junk)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"truncated or corrupt \(the file is empty\)"):
        load_state_dict(empty)
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict(tmp_path / "nope.safetensors")
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(CheckpointError, match="not a supported checkpoint"):
        load_state_dict(txt)


def test_unsafe_pickle_is_refused_not_executed(tmp_path):
    path = tmp_path / "with_args.pt"
    torch.save({"ema": small_latte().state_dict(), "args": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(CheckpointError, match=r"besides tensors \(argparse\.Namespace\).*cannot be loaded safely"):
        load_state_dict(path)


def test_pickles_without_state_dict(tmp_path):
    p1 = tmp_path / "list.pt"
    torch.save([1, 2, 3], p1)
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        load_state_dict(p1)
    p2 = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "step": 10}, p2)
    with pytest.raises(CheckpointError, match="holds no state dict: top-level keys are 'epoch', 'step'"):
        load_state_dict(p2)


# ------------------------------------------------------------------------------ registry


def test_a_new_family_is_one_more_entry_in_the_explicit_list(monkeypatch):
    assert [d.name for d in families.FAMILIES] == ["latte", "videocrafter", "modelscope_unet3d", "vidrd_unet3d",
                                                  "cogvideox"]

    def detect(sd, meta):
        if "dummy.weight" in sd:
            return FamilyInfo(name="dummy", config={"n": sd["dummy.weight"].shape[0]}, detector="dummy")
        return None

    def build(info, **kw):
        return nn.Linear(1, info.config["n"], bias=False)

    dummy = FamilyDetector(name="dummy", looks_for=("dummy.weight",), detect=detect, build=build,
                           load_weights=load_weights_strict)
    monkeypatch.setattr(families, "FAMILIES", families.FAMILIES + (dummy,))
    info = detect_family({"model.dummy.weight": torch.zeros(3, 1)})
    assert (info.name, info.config, info.prefix) == ("dummy", {"n": 3}, "model.")
    with pytest.raises(CheckpointError, match=r"dummy: dummy\.weight"):
        detect_family({"other": torch.zeros(1)})


def test_integer_or_non_finite_weights_are_refused_naming_the_key():
    net = nn.Linear(3, 2)
    bad = {k: v.clone() for k, v in net.state_dict().items()}
    bad["weight"] = bad["weight"].to(torch.int8)
    with pytest.raises(CheckpointError, match=r"weight is int8, but the probe has floating-point weights"):
        load_weights_strict(net, bad, "probe")
    nan = {k: v.clone() for k, v in net.state_dict().items()}
    nan["bias"][0] = float("nan")
    with pytest.raises(CheckpointError, match=r"bias holds NaN or infinite values"):
        load_weights_strict(net, nan, "probe")
    load_weights_strict(net, {k: v.clone() for k, v in net.state_dict().items()}, "probe")  # a good one still loads
