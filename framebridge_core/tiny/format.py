"""The tiny models' file format: network sizes, exported metadata, and loading a trained model.

Exported files are safetensors whose metadata (``framebridge.*``) records the variant, what the
network predicts, its config and its classes, so a file is self-describing for the animator, the
benchmarks and the ComfyUI loaders.
"""

from __future__ import annotations

import json
from typing import Optional

import torch

from ..checkpoints import load_state_dict, load_weights_strict, normalize_state_dict
from ..families.latte.network import LatteConfig, LatteModel, LatteNeuralPrior

#: Network sizes. ``tiny`` / ``tiny-np`` are the bundled models (64×64 RGB, 16 frames, patch 8); ``bench`` is the
#: smaller configuration of the quality benchmark; ``smoke`` is for tests.
PRESETS: dict[str, dict[str, int]] = {
    # head = width of the conv head after unpatchify (0 = the official linear unpatchify), head_features =
    # extra feature channels the final layer emits for it; the head removes the patch grid
    # (docs/notes/tiny-model.md, "Patch grid")
    # hidden >= patch² x 3 = 192: the per-token identity (the skip of the noise) must fit through
    # the patch embedding, or the bridge cannot remove pixel noise (docs/notes/tiny-model.md)
    # overlap = the overlap-add unpatchify in front of the conv head (LatteConfig.head_overlap)
    "tiny": dict(size=64, frames=16, patch=8, hidden=192, depth=6, heads=6, head=32, head_features=8, overlap=1),
    # the bundled neural prior (a one-pass regression to smooth targets has no such need)
    "tiny-np": dict(size=64, frames=16, patch=8, hidden=160, depth=8, heads=5, head=32, head_features=8, overlap=1),
    "bench": dict(size=32, frames=8, patch=4, hidden=128, depth=6, heads=4, head=32, head_features=8),
    "smoke": dict(size=16, frames=4, patch=4, hidden=32, depth=2, heads=2, head=8, head_features=4),
}

META_PREFIX = "framebridge."
EXPORT_FILE = "model.safetensors"
#: What each variant's network predicts and what its timestep input means (exported metadata).
PREDICTS = {"bridge": "eps_psi", "bridge-np": "eps_psi", "diffusion": "v", "neural-prior": "x0",
            "saf": "v_aligned", "plain-finetune": "v_aligned"}
TIMESTEP = {"bridge": "bridge_index", "bridge-np": "bridge_index", "diffusion": "diffusion_timestep",
            "neural-prior": "none", "saf": "saf_t_tilde", "plain-finetune": "bridge_index"}


def network_config(kind: str, preset: str, num_classes: int, output: str = "eps_psi", *,
                   head_width: Optional[int] = None, head_features: Optional[int] = None,
                   head_overlap: Optional[bool] = None, keep_first_frame: bool = True) -> LatteConfig:
    """The network of variant ``kind`` at ``preset`` size; ``head_width`` / ``head_features`` override
    the preset's conv head (0 = the official linear unpatchify), ``head_overlap`` its overlap-add unpatchify."""
    p = PRESETS[preset]
    width = p["head"] if head_width is None else head_width
    feats = (p["head_features"] if head_features is None else head_features) if width else 0
    overlap = bool(p.get("overlap", 0)) if head_overlap is None else bool(head_overlap)
    common = dict(input_size=p["size"], patch_size=p["patch"], hidden_size=p["hidden"], depth=p["depth"],
                  num_heads=p["heads"], num_frames=p["frames"], num_classes=num_classes, out_channels=3,
                  head_width=width, head_features=feats, head_overlap=overlap,
                  keep_first_frame=keep_first_frame)
    if kind == "neural-prior":
        return LatteConfig(in_channels=3, condition_type=None, has_timestep=False, **common)
    out = output if kind in ("bridge", "bridge-np") else "eps_psi"
    return LatteConfig(in_channels=6 if kind == "bridge-np" else 3, output=out, **common)


def read_weights(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    sd, meta = load_state_dict(path)
    sd, _, _ = normalize_state_dict(sd)
    return {k: v.float() for k, v in sd.items()}, meta


def load_trained(path: str, kind: Optional[str] = None) -> tuple[torch.nn.Module, dict[str, str]]:
    """Load a model this module exported: ``(network in eval mode, metadata)``."""
    sd, meta = read_weights(path)
    config = LatteConfig.from_dict(json.loads(meta[META_PREFIX + "config"]))
    kind = kind or meta.get(META_PREFIX + "variant", "bridge")
    net = LatteNeuralPrior(config) if kind == "neural-prior" else LatteModel(config)
    target = net.nwarp_model if kind == "neural-prior" else net
    load_weights_strict(target, sd, f"{kind} network")
    return net.eval(), meta


__all__ = ["EXPORT_FILE", "META_PREFIX", "PREDICTS", "PRESETS", "TIMESTEP", "load_trained", "network_config",
           "read_weights"]
