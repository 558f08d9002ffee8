"""The tiny official Latte config and weights recorded in tests/fixtures/latte/ (shared by tests)."""

import json
from pathlib import Path

from safetensors.torch import load_file

from framebridge_core.families.latte.network import LatteConfig

LAT = Path(__file__).resolve().parents[2] / "fixtures" / "latte"
META = json.loads((LAT / "meta.json").read_text())
TOL = 1e-5


def tiny_config(**kw) -> LatteConfig:
    """The fixture's bridge config (4 channels, concat_pre); override fields for the variants."""
    o = META["official_kwargs"]
    base = dict(input_size=o["input_size"], patch_size=o["patch_size"], in_channels=4,
                out_channels=4, hidden_size=o["hidden_size"], depth=o["depth"],
                num_heads=o["num_heads"], mlp_ratio=o["mlp_ratio"], num_frames=o["num_frames"],
                num_classes=o["num_classes"], class_dropout=True, condition_type="concat_pre",
                has_timestep=True, learn_sigma=False)
    base.update(kw)
    return LatteConfig(**base)


def fixture_weights(name: str) -> dict:
    return {k: v.float() for k, v in load_file(str(LAT / f"{name}.safetensors")).items()}
