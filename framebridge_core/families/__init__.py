"""The model families: one folder each, all in the same shape, listed explicitly in :data:`FAMILIES`.

Each family folder has its network(s), a ``checkpoint.py`` whose ``DETECTOR`` recognises the
family from state-dict keys and shapes (never the file name) and builds/fills the network, and a
``frames.py`` adapter for the frames-as-batch layout hosts use (:mod:`.frames`). Adding a family
means adding a folder and one entry here.

    model, info = load_model(path, operations=..., dtype=..., device=...)
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch
import torch.nn as nn

from ..checkpoints import FamilyDetector, FamilyInfo, PathLike, load_state_dict, normalize_state_dict
from ..errors import CheckpointError
from .cogvideox.checkpoint import DETECTOR as COGVIDEOX
from .latte.checkpoint import DETECTOR as LATTE
from .modelscope.checkpoint import DETECTOR as MODELSCOPE
from .videocrafter.checkpoint import DETECTOR as VIDEOCRAFTER
from .vidrd.checkpoint import DETECTOR as VIDRD

#: Every family the pack loads, in detection order (the first detector that accepts a state dict wins).
FAMILIES: tuple[FamilyDetector, ...] = (LATTE, VIDEOCRAFTER, MODELSCOPE, VIDRD, COGVIDEOX)


def family(name: str) -> FamilyDetector:
    """The detector named ``name`` (``"latte"``, ``"videocrafter"``, ``"modelscope_unet3d"``, ``"vidrd_unet3d"``,
    ``"cogvideox"``)."""
    for d in FAMILIES:
        if d.name == name:
            return d
    raise CheckpointError(f"no model family named {name!r}; known: {', '.join(d.name for d in FAMILIES)}.")


def detect_family(state_dict: Mapping[str, torch.Tensor], metadata: Optional[Mapping[str, str]] = None) -> FamilyInfo:
    """Recognise the model family and infer its config from keys and shapes only."""
    if not state_dict:
        raise CheckpointError("The state dict is empty: nothing to detect.")
    sd, prefix, notes = normalize_state_dict(state_dict)
    metadata = dict(metadata or {})
    for det in FAMILIES:
        info = det.detect(sd, metadata)
        if info is not None:
            return FamilyInfo(name=info.name, config=info.config, detector=det.name, prefix=prefix,
                              notes=notes + info.notes)
    sample = ", ".join(sorted(sd)[:6])
    looked = "; ".join(f"{d.name}: {', '.join(d.looks_for)}" for d in FAMILIES)
    raise CheckpointError(
        f"Unknown model family: none of the supported families matched this checkpoint "
        f"({len(sd)} tensors{', prefix ' + repr(prefix) + ' removed' if prefix else ''}; "
        f"first keys: {sample}). Keys looked for: {looked}. "
        f"Supported: {', '.join(d.name for d in FAMILIES)}.")


def build_model(info: FamilyInfo, *, operations=None, device=None, dtype=None, attention=None) -> nn.Module:
    """An empty (unloaded) module for a detected family."""
    return family(info.detector).build(info, operations=operations, device=device, dtype=dtype, attention=attention)


def load_model(path: PathLike, *, operations=None, dtype: Optional[torch.dtype] = None,
               device=None, attention=None) -> tuple[nn.Module, FamilyInfo]:
    """Read ``path``, detect its family, build the module and load the weights (strict).

    ``operations`` / ``device`` / ``dtype`` / ``attention`` are passed to the network;
    ``dtype=None`` builds float32. Returns ``(module in eval mode, FamilyInfo)``; for the Latte
    neural prior the module is a ``LatteNeuralPrior`` (weights in ``module.nwarp_model``).
    """
    state_dict, metadata = load_state_dict(path)
    info = detect_family(state_dict, metadata)
    sd, _, _ = normalize_state_dict(state_dict)
    module = build_model(info, operations=operations, device=device, dtype=dtype, attention=attention)
    family(info.detector).load_weights(module, sd)
    return module.eval(), info


__all__ = ["FAMILIES", "build_model", "detect_family", "family", "load_model"]
