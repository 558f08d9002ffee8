"""Safe checkpoint loading, family detection from state-dict keys, and model construction.

Public API::

    state_dict, metadata = load_state_dict(path)      # tensors on CPU + string metadata
    info = detect_family(state_dict, metadata)        # FamilyInfo(name, config, ...)
    model, info = load_model(path, operations=..., dtype=..., device=...)

Reading is always safe: ``.pt/.pth/.ckpt/.bin`` go through
``torch.load(weights_only=True, map_location="cpu")`` and ``.safetensors`` through
``safetensors.torch.load_file``. The container layout is unwrapped: the official Latte
``{"ema": state_dict}``, ``{"model": ...}``, ``{"state_dict": ...}``, ``{"module": ...}`` or a plain
state dict. The format is sniffed from the file's first bytes (the suffix is only a fallback).

The family and the whole architecture config are inferred from key names and tensor shapes
only, never from file names. Wrapper prefixes (``module.``, ``model.``, ``nwarp_model.``) are
stripped when every key carries them; a checkpoint with ``nwarp_model.*`` next to other keys
(the official ``Latte_nwarp`` layout) is reduced to its ``nwarp_model.*`` part, as the official
sampler does with ``strict=False``.

Families are detectors in a registry (:func:`register_family`): each one looks at a normalised
state dict and returns a :class:`FamilyInfo` or ``None``, and knows how to build and fill its
model. VideoCrafter / ModelScope UNets and CogVideoX can be added the same way.

Latte inference rules (official ``framebridge-latte/models/latte.py``):

* ``x_embedder.proj.weight [D, C_in, p, p]`` -> hidden size ``D``, input channels, patch size.
* ``pos_embed [1, N, D]`` -> input size ``sqrt(N) * p``; ``temp_embed [1, F, D]`` -> frames.
* ``t_embedder.*`` present -> bridge model (``condition_type="concat_pre"``, video frames
  ``F - 1``); absent -> neural prior (``condition_type=None``, ``F`` frames).
* ``y_embedder.embedding_table.weight [R, D]`` -> ``num_classes = R - 1`` with a null class
  ``R - 1`` (official training always uses label dropout 0.1, which adds that row; UCF-101:
  102 rows, null class 101). No table -> unconditional.
* ``final_layer.linear.weight [p*p*C_out, D]`` -> output channels; ``C_out == 2*C_in`` means
  ``learn_sigma``; ``C_in == 2*C_out`` is the neural-prior channel concat (8 -> 4).
* depth = number of ``blocks.N``; mlp ratio from ``blocks.0.mlp.fc1.weight``.
* The head count is not visible in the weights. It comes from the safetensors metadata
  ``framebridge.num_heads`` if present, else from the official presets by hidden size
  (1152/1024 -> 16, 768 -> 12, 384 -> 6), else ``D // 64`` (noted in ``FamilyInfo.notes``).
* Finally every key and shape is checked against the model that config builds.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from .errors import CheckpointError
from .models.latte import (
    OFFICIAL_NUM_HEADS,
    OUTPUTS,
    LatteConfig,
    LatteModel,
    LatteNeuralPrior,
)

PathLike = Union[str, os.PathLike]

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
SAFETENSORS_SUFFIXES = (".safetensors",)
#: Keys of a wrapping dict that hold the state dict, in order of preference (EMA first, as the
#: official ``find_model``).
CONTAINER_KEYS = ("ema", "model", "state_dict", "module")
#: Prefixes stripped when *all* keys carry them (repeatedly, in any order).
STRIP_PREFIXES = ("module.", "model.", "nwarp_model.")
#: Safetensors metadata key that supplies the attention head count.
META_NUM_HEADS = "framebridge.num_heads"

LATTE_BRIDGE = "latte_bridge"
LATTE_NEURAL_PRIOR = "latte_neural_prior"


@dataclass(frozen=True)
class FamilyInfo:
    """What a state dict is.

    Attributes:
        name: family name, e.g. ``"latte_bridge"`` or ``"latte_neural_prior"``.
        config: the architecture config (a :class:`LatteConfig` for Latte families).
        detector: name of the registry entry that recognised it (builds and fills the model).
        prefix: wrapper prefix(es) removed from the raw keys, e.g. ``"nwarp_model."``.
        notes: human-readable remarks on inferred values (e.g. where the head count came from).
    """

    name: str
    config: Any
    detector: str
    prefix: str = ""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class FamilyDetector:
    """A registry entry.

    ``detect(state_dict, metadata) -> FamilyInfo | None`` sees prefix-stripped keys and returns
    None when the keys are not its family (it may raise :class:`CheckpointError` when they are
    its family but broken). ``build(info, operations=, device=, dtype=, attention=)`` makes the
    module and ``load_weights(module, state_dict)`` fills it (strictly).
    """

    name: str
    looks_for: tuple[str, ...]
    detect: Callable[[Mapping[str, torch.Tensor], Mapping[str, str]], Optional[FamilyInfo]]
    build: Callable[..., nn.Module]
    load_weights: Callable[[nn.Module, Mapping[str, torch.Tensor]], None]


_REGISTRY: list[FamilyDetector] = []


def register_family(detector: FamilyDetector, *, first: bool = False) -> None:
    """Add a family detector (replacing one of the same name)."""
    _REGISTRY[:] = [d for d in _REGISTRY if d.name != detector.name]
    if first:
        _REGISTRY.insert(0, detector)
    else:
        _REGISTRY.append(detector)


def registered_families() -> tuple[FamilyDetector, ...]:
    return tuple(_REGISTRY)


def _detector(name: str) -> FamilyDetector:
    for d in _REGISTRY:
        if d.name == name:
            return d
    raise CheckpointError(f"no model family detector named {name!r} is registered")


# ----------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------


def _size_text(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n} bytes"


def _corrupt(path: Path, reason: str) -> CheckpointError:
    try:
        size = _size_text(path.stat().st_size)
    except OSError:
        size = "unknown size"
    return CheckpointError(
        f"Cannot read checkpoint '{path.name}' ({size}): the file looks truncated or corrupt "
        f"({reason}). Re-download it (an interrupted download or a copy that is still in "
        f"progress leaves a file like this) and check its size against the source.")


def _sniff(path: Path) -> str:
    """'safetensors', 'torch' or '' from the first bytes (zip magic / pickle / JSON header)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80":
        return "torch"  # legacy (non-zip) torch.save pickle
    return ""


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
        state_dict = load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own SafetensorError for bad headers/sizes
        raise _corrupt(path, f"{type(e).__name__}: {e}") from e
    metadata["format"] = "safetensors"
    return state_dict, metadata


def _read_torch(path: Path) -> tuple[Any, dict[str, str]]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Weights only load failed" in msg and ("Unsupported global" in msg or "GLOBAL" in msg):
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", msg)
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"Checkpoint '{path.name}' contains Python objects besides tensors{what}, so it "
                f"cannot be loaded safely (weights_only=True); arbitrary pickles are never "
                f"executed. Save only the weights, e.g. torch.save({{'ema': state_dict}}, ...) or "
                f"convert it to .safetensors.") from e
        detail = re.search(r"WeightsUnpickler error: *\n*\s*([^\n]+)", msg)
        reason = "invalid pickle data" + (f": {detail.group(1).strip()}" if detail else "")
        raise _corrupt(path, reason) from e
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError, AttributeError,
            TypeError, MemoryError, UnicodeDecodeError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        first = str(e).splitlines()[0].split(". ")[0] if str(e) else ""
        raise _corrupt(path, f"{type(e).__name__}: {first}") from e
    return obj, {"format": "torch"}


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) for k in obj) and any(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], Optional[str]]:
    if isinstance(obj, Mapping):
        for key in CONTAINER_KEYS:
            inner = obj.get(key)
            if _is_state_dict(inner):
                return {k: v for k, v in inner.items() if isinstance(v, torch.Tensor)}, key
        if _is_state_dict(obj):
            return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, None
        keys = ", ".join(repr(k) for k in list(obj)[:8])
        raise CheckpointError(
            f"Checkpoint '{path.name}' holds no state dict: top-level keys are {keys or '(none)'}; "
            f"expected tensors, or one of {', '.join(CONTAINER_KEYS)} holding them.")
    raise CheckpointError(f"Checkpoint '{path.name}' holds a {type(obj).__name__}, not a state dict "
                          f"(a mapping of parameter names to tensors).")


def load_state_dict(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a checkpoint safely. Returns ``(state_dict, metadata)``.

    ``metadata`` holds the safetensors header metadata (if any) plus ``format``
    (``"safetensors"`` / ``"torch"``) and, when a wrapper was unwrapped, ``container``
    (``"ema"``, ``"model"``, ...). Keys are returned as stored (prefixes are stripped by
    :func:`detect_family` / :func:`normalize_state_dict`). Raises :class:`CheckpointError` for a
    missing, empty, truncated, corrupt, unsafe or non-state-dict file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file not found: '{path}'. Check the path and the model folder.")
    size = path.stat().st_size
    if size == 0:
        raise _corrupt(path, "the file is empty")
    kind = _sniff(path)
    suffix = path.suffix.lower()
    if not kind:
        if suffix in SAFETENSORS_SUFFIXES:
            kind = "safetensors"
        elif suffix in TORCH_SUFFIXES:
            kind = "torch"
        else:
            raise CheckpointError(
                f"'{path.name}' is not a supported checkpoint: use .safetensors or a torch file "
                f"({', '.join(TORCH_SUFFIXES)}).")
    if kind == "safetensors":
        state_dict, metadata = _read_safetensors(path)
        container = None
        if not state_dict:
            raise CheckpointError(f"Checkpoint '{path.name}' contains no tensors.")
    else:
        obj, metadata = _read_torch(path)
        state_dict, container = _unwrap(obj, path)
    if container is not None:
        metadata["container"] = container
    return state_dict, metadata


# ----------------------------------------------------------------------------------------------
# Normalisation and detection
# ----------------------------------------------------------------------------------------------


def normalize_state_dict(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str, tuple[str, ...]]:
    """Strip wrapper prefixes. Returns ``(state_dict, removed_prefix, notes)``."""
    sd = dict(state_dict)
    notes: list[str] = []
    removed = ""
    nwarp = [k for k in sd if k.startswith("nwarp_model.")]
    if nwarp and len(nwarp) != len(sd):
        notes.append(f"kept the {len(nwarp)} nwarp_model.* tensors, ignored {len(sd) - len(nwarp)} others")
        sd = {k: sd[k] for k in nwarp}
    changed = True
    while changed and sd:
        changed = False
        for p in STRIP_PREFIXES:
            if all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                removed += p
                changed = True
    return sd, removed, tuple(notes)


def detect_family(state_dict: Mapping[str, torch.Tensor],
                  metadata: Optional[Mapping[str, str]] = None) -> FamilyInfo:
    """Recognise the model family and infer its config from keys and shapes only."""
    if not state_dict:
        raise CheckpointError("The state dict is empty: nothing to detect.")
    sd, prefix, notes = normalize_state_dict(state_dict)
    metadata = dict(metadata or {})
    for det in _REGISTRY:
        info = det.detect(sd, metadata)
        if info is not None:
            return FamilyInfo(name=info.name, config=info.config, detector=det.name,
                              prefix=prefix, notes=notes + info.notes)
    sample = ", ".join(sorted(sd)[:6])
    looked = "; ".join(f"{d.name}: {', '.join(d.looks_for)}" for d in _REGISTRY)
    raise CheckpointError(
        f"Unknown model family: none of the supported families matched this checkpoint "
        f"({len(sd)} tensors{', prefix ' + repr(prefix) + ' removed' if prefix else ''}; "
        f"first keys: {sample}). Keys looked for: {looked}. "
        f"Supported: {', '.join(d.name for d in _REGISTRY)}.")


def _few(keys: Sequence[str], n: int = 5) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def check_state_dict(expected: Mapping[str, Sequence[int]], state_dict: Mapping[str, torch.Tensor],
                     what: str = "model") -> None:
    """Raise :class:`CheckpointError` naming missing / unexpected / mis-shaped keys."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [f"{k} {list(state_dict[k].shape)} != {list(expected[k])}" for k in expected
             if k in state_dict and list(state_dict[k].shape) != list(expected[k])]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): {_few(wrong, 3)}")
    if problems:
        raise CheckpointError(f"The checkpoint does not fit the {what}: " + "; ".join(problems)
                              + ". Is it a different model variant, or an incomplete file?")


def load_weights_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = "model") -> None:
    """``module.load_state_dict(state_dict)`` with a readable :class:`CheckpointError` first."""
    expected = {k: list(v.shape) for k, v in module.state_dict().items()}
    check_state_dict(expected, state_dict, what)
    module.load_state_dict(dict(state_dict), strict=True)


# ----------------------------------------------------------------------------------------------
# Latte family
# ----------------------------------------------------------------------------------------------

_LATTE_KEYS = ("x_embedder.proj.weight", "pos_embed", "temp_embed", "final_layer.linear.weight",
               "blocks.0.attn.qkv.weight")


def _latte_num_heads(hidden: int, metadata: Mapping[str, str]) -> tuple[int, str]:
    if META_NUM_HEADS in metadata:
        try:
            heads = int(metadata[META_NUM_HEADS])
        except ValueError:
            raise CheckpointError(f"metadata {META_NUM_HEADS}={metadata[META_NUM_HEADS]!r} is not an integer")
        return heads, f"num_heads={heads} from metadata {META_NUM_HEADS}"
    if hidden in OFFICIAL_NUM_HEADS:
        heads = OFFICIAL_NUM_HEADS[hidden]
        return heads, f"num_heads={heads} from the official Latte preset for hidden size {hidden}"
    if hidden % 64 == 0:
        heads = hidden // 64
        return heads, f"num_heads={heads} guessed as hidden/64 (not an official size; set metadata {META_NUM_HEADS})"
    raise CheckpointError(
        f"Cannot infer the attention head count of a Latte model with hidden size {hidden} "
        f"(official sizes: {sorted(OFFICIAL_NUM_HEADS)}). Save it as .safetensors with metadata "
        f"{{'{META_NUM_HEADS}': '<heads>'}}.")


#: Safetensors metadata key naming what a bridge network's output means (the weights cannot tell)
META_PREDICTS = "framebridge.predicts"


def _latte_output(metadata: Mapping[str, str]) -> str:
    """``eps_psi`` (official checkpoints, no metadata), or ``precond`` / ``x0`` (the project's tiny models)."""
    value = metadata.get(META_PREDICTS, "eps_psi")
    if value not in OUTPUTS:
        raise CheckpointError(
            f"metadata {META_PREDICTS}={value!r} is not a bridge output this pack can sample "
            f"(supported: {', '.join(OUTPUTS)}); v-prediction models of the quality benchmark are "
            f"for `python -m framebridge_core bench quality`.")
    return value


def _detect_latte(sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Optional[FamilyInfo]:
    if not all(k in sd for k in _LATTE_KEYS):
        return None
    if "cond_embedder.proj.weight" in sd or any(".attn.wq." in k for k in sd):
        raise CheckpointError(
            "This is a Latte model with cross-attention/adaLN image conditioning "
            "(cond_embedder / attn.wq keys), not a FrameBridge-Latte model (concat_pre); it is "
            "not supported.")
    w = sd["x_embedder.proj.weight"]
    pos, temp = sd["pos_embed"], sd["temp_embed"]
    lin = sd["final_layer.linear.weight"]
    if w.ndim != 4 or w.shape[2] != w.shape[3] or pos.ndim != 3 or temp.ndim != 3 or lin.ndim != 2:
        raise CheckpointError(
            f"Latte-like keys with unexpected shapes: x_embedder.proj.weight {list(w.shape)}, "
            f"pos_embed {list(pos.shape)}, temp_embed {list(temp.shape)}, "
            f"final_layer.linear.weight {list(lin.shape)}.")
    hidden, in_ch, p = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    n_patch = int(pos.shape[1])
    grid = math.isqrt(n_patch)
    if grid * grid != n_patch:
        raise CheckpointError(f"pos_embed has {n_patch} patches, not a square grid; unsupported Latte layout.")
    if lin.shape[0] % (p * p):
        raise CheckpointError(f"final_layer.linear.weight {list(lin.shape)} does not fit patch size {p}.")
    out_ch = int(lin.shape[0]) // (p * p)
    block_ids = {int(m.group(1)) for k in sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m}
    depth = max(block_ids) + 1
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    mlp_ratio = float(fc1.shape[0]) / hidden if fc1 is not None else 4.0
    has_t = "t_embedder.mlp.0.weight" in sd
    freq = int(sd["t_embedder.mlp.0.weight"].shape[1]) if has_t else 256
    table = sd.get("y_embedder.embedding_table.weight")
    num_classes = int(table.shape[0]) - 1 if table is not None else 0
    heads, head_note = _latte_num_heads(hidden, metadata)
    seq = int(temp.shape[1])
    if has_t:
        if seq < 2:
            raise CheckpointError(f"temp_embed has {seq} frame(s); a concat_pre bridge model needs at least 2.")
        name, cond_type, frames = LATTE_BRIDGE, "concat_pre", seq - 1
    else:
        name, cond_type, frames = LATTE_NEURAL_PRIOR, None, seq
    try:
        cfg = LatteConfig(input_size=grid * p, patch_size=p, in_channels=in_ch, out_channels=out_ch,
                          hidden_size=hidden, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio,
                          num_frames=frames, num_classes=num_classes, class_dropout=table is not None,
                          condition_type=cond_type, has_timestep=has_t,
                          learn_sigma=out_ch == 2 * in_ch, frequency_embedding_size=freq,
                          output=_latte_output(metadata) if has_t else "eps_psi")
    except Exception as e:  # ConfigError from impossible combinations
        raise CheckpointError(f"Latte checkpoint with an impossible configuration: {e}") from e
    expected = LatteModel(cfg, device="meta").state_dict()
    check_state_dict({k: list(v.shape) for k, v in expected.items()}, sd,
                     f"inferred {name} (hidden {hidden}, depth {depth}, {in_ch} input channels)")
    return FamilyInfo(name=name, config=cfg, detector="latte", notes=(head_note,))


def _build_latte(info: FamilyInfo, *, operations=None, device=None, dtype=None, attention=None) -> nn.Module:
    cls = LatteNeuralPrior if info.name == LATTE_NEURAL_PRIOR else LatteModel
    return cls(info.config, operations=operations, device=device, dtype=dtype, attention=attention)


def _load_latte(module: nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    target = module.nwarp_model if isinstance(module, LatteNeuralPrior) else module
    load_weights_strict(target, sd, "Latte network")


register_family(FamilyDetector(name="latte", looks_for=_LATTE_KEYS, detect=_detect_latte,
                               build=_build_latte, load_weights=_load_latte))


# ----------------------------------------------------------------------------------------------
# One call
# ----------------------------------------------------------------------------------------------


def build_model(info: FamilyInfo, *, operations=None, device=None, dtype=None, attention=None) -> nn.Module:
    """An empty (unloaded) module for a detected family."""
    return _detector(info.detector).build(info, operations=operations, device=device, dtype=dtype,
                                          attention=attention)


def load_model(path: PathLike, *, operations=None, dtype: Optional[torch.dtype] = None,
               device=None, attention=None) -> tuple[nn.Module, FamilyInfo]:
    """Read ``path``, detect its family, build the module and load the weights (strict).

    ``operations`` / ``device`` / ``dtype`` / ``attention`` are passed to the network (see
    :mod:`framebridge_core.models.latte`); ``dtype=None`` builds float32. Returns
    ``(module in eval mode, FamilyInfo)``; for the Latte neural prior the module is a
    :class:`LatteNeuralPrior` (weights in ``module.nwarp_model``).
    """
    state_dict, metadata = load_state_dict(path)
    info = detect_family(state_dict, metadata)
    sd, _, _ = normalize_state_dict(state_dict)
    module = build_model(info, operations=operations, device=device, dtype=dtype, attention=attention)
    _detector(info.detector).load_weights(module, sd)
    return module.eval(), info


__all__ = [
    "CONTAINER_KEYS", "FamilyDetector", "FamilyInfo", "LATTE_BRIDGE", "LATTE_NEURAL_PRIOR",
    "META_NUM_HEADS", "STRIP_PREFIXES", "build_model", "check_state_dict", "detect_family",
    "load_model", "load_state_dict", "load_weights_strict", "normalize_state_dict",
    "register_family", "registered_families",
]


# Further families register themselves on import; import them here so that load_model and
# detect_family know every family without the caller importing it first.
from . import videocrafter  # noqa: E402,F401
