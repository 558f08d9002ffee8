"""Safe checkpoint reading, wrapper unwrapping and strict loading, for every family.

Reading is always safe: ``.pt/.pth/.ckpt/.bin`` go through
``torch.load(weights_only=True, map_location="cpu")`` and ``.safetensors`` through
``safetensors.torch.load_file``. The container layout is unwrapped (``{"ema": ...}``,
``{"model": ...}``, ``{"state_dict": ...}``, ``{"module": ...}`` or a plain state dict) and the
format is sniffed from the file's first bytes (the suffix is only a fallback). Recognising which
family a state dict is belongs to :mod:`framebridge_core.families`; :class:`FamilyDetector` is the
type each family provides for that.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from .errors import CheckpointError

PathLike = Union[str, os.PathLike]

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
SAFETENSORS_SUFFIXES = (".safetensors",)
#: Keys of a wrapping dict that hold the state dict, in order of preference (EMA first, as the
#: official ``find_model``).
CONTAINER_KEYS = ("ema", "model", "state_dict", "module")
#: Prefixes stripped when *all* keys carry them (repeatedly, in any order).
STRIP_PREFIXES = ("module.", "model.", "nwarp_model.")


@dataclass(frozen=True)
class FamilyInfo:
    """What a state dict is.

    Attributes:
        name: family name, e.g. ``"latte_bridge"`` or ``"latte_neural_prior"``.
        config: the architecture config (the family's own config dataclass).
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
    """How one family recognises, builds and fills its networks (see :mod:`framebridge_core.families`).

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


def _refuse_non_safetensors(path: Path, kind: str, size: int) -> None:
    """A file named .safetensors that is not one: a pickle (which can run code) or other bytes. A truncated real
    safetensors file (plausible header length) is left to the reader, which reports it as truncated."""
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(max(0, size - 1))
        last = f.read(1)
    if kind == "torch":
        found = ("a PyTorch checkpoint (a zip of pickles, torch.save)" if head[:4] == b"PK\x03\x04"
                 else "a Python pickle (torch.save / pickle.dump)")
    else:
        header = int.from_bytes(head, "little") if len(head) == 8 else 0
        if 2 <= header <= size - 8:
            return
        found = ("a Python pickle (protocol 0/1)" if last == b"." and head[:1] in (b"c", b"(", b"}", b"]")
                 else f"not the safetensors format (its first 8 bytes give a {header}-byte header in a "
                      f"{size}-byte file)")
    raise CheckpointError(
        f"'{path.name}' is named .safetensors but holds {found}, so it was not read: a pickle can run code "
        f"when loaded, and files named .safetensors must be safetensors. Convert it with "
        f"safetensors.torch.save_file, or, if it is a plain weights file from a source you trust, rename it to "
        f".pt (then it is read with weights_only=True: tensors only, no code).")


def load_state_dict(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a checkpoint safely. Returns ``(state_dict, metadata)``.

    ``metadata`` holds the safetensors header metadata (if any) plus ``format``
    (``"safetensors"`` / ``"torch"``) and, when a wrapper was unwrapped, ``container``
    (``"ema"``, ``"model"``, ...). Keys are returned as stored (prefixes are stripped by
    :func:`normalize_state_dict`). Raises :class:`CheckpointError` for a
    missing, empty, truncated, corrupt, unsafe or non-state-dict file.
    """
    path = Path(path)
    if path.is_dir():
        return load_diffusers_folder(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file not found: '{path}'. Check the path and the model folder.")
    size = path.stat().st_size
    if size == 0:
        raise _corrupt(path, "the file is empty")
    kind = _sniff(path)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES and kind != "safetensors":
        _refuse_non_safetensors(path, kind, size)
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


def diffusers_weight_files(folder: Path) -> list[Path]:
    """The safetensors of a diffusers model folder: the shards its index names, else its one weights file."""
    index = sorted(folder.glob("*.safetensors.index.json"))
    if index:
        try:
            names = sorted(set(json.loads(index[0].read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"'{index[0].name}' in '{folder.name}' is not a readable shard index ({e}).") from e
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise CheckpointError(f"the model folder '{folder.name}' lacks {len(missing)} shard(s) its index names: "
                                  f"{', '.join(missing[:4])}. Copy the whole folder again.")
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"the folder '{folder.name}' holds no .safetensors weights (a diffusers model folder has "
                              f"config.json and diffusion_pytorch_model*.safetensors).")
    return files


def load_diffusers_folder(folder: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(state_dict, metadata)`` of a diffusers model folder; ``metadata["config"]`` is its config.json text."""
    folder = Path(folder)
    state_dict: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}
    for f in diffusers_weight_files(folder):
        part, meta = _read_safetensors(f)
        state_dict.update(part)
        metadata.update(meta)
    config = folder / "config.json"
    if config.is_file():
        metadata["config"] = config.read_text(encoding="utf-8")
    metadata["format"] = "diffusers-folder"
    return state_dict, metadata


# ----------------------------------------------------------------------------------------------
# Normalisation and strict loading
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


def check_weight_values(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], what: str) -> None:
    """Refuse integer/bool tensors where the model has floating-point weights (they would be cast and
    sample garbage) and NaN/inf values (a silent black video), naming the first bad key."""
    for k, v in state_dict.items():
        if k in expected and expected[k].is_floating_point() and not v.is_floating_point():
            raise CheckpointError(f"The checkpoint's {k} is {str(v.dtype).replace('torch.', '')}, but the {what} has "
                                  f"floating-point weights: this is not a weights file of this model (or a quantised "
                                  f"one this pack cannot read). Use the original fp32/fp16/bf16 file.")
        if v.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64) and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"The checkpoint's {k} holds NaN or infinite values: the file is damaged (or the "
                                  f"training diverged). Re-download or re-export the {what}.")


def load_weights_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = "model") -> None:
    """``module.load_state_dict(state_dict)`` with a readable :class:`CheckpointError` first."""
    own = module.state_dict()
    check_state_dict({k: list(v.shape) for k, v in own.items()}, state_dict, what)
    check_weight_values(state_dict, own, what)
    module.load_state_dict(dict(state_dict), strict=True)


# ----------------------------------------------------------------------------------------------
# Checkpoints of other kinds (what a user may pick by mistake)
# ----------------------------------------------------------------------------------------------

#: (what it is, the loader that reads it): files of models this pack does not load, told apart by their keys
FOREIGN_KINDS = {
    "sdxl": ("a Stable Diffusion XL checkpoint (an image model)", "core 'Load Checkpoint' (models/checkpoints)"),
    "sd": ("a Stable Diffusion 1.x/2.x checkpoint (an image model)", "core 'Load Checkpoint' (models/checkpoints)"),
    "sd_unet": ("a Stable Diffusion UNet without its text encoder and VAE (an image model)",
                "core 'Load Diffusion Model' (models/diffusion_models)"),
    "controlnet": ("a ControlNet", "core 'Load ControlNet Model' (models/controlnet)"),
    "lora": ("a LoRA", "core 'LoraLoaderModelOnly' on the loaded MODEL (models/loras)"),
    "cogvideox_vae": ("the CogVideoX VAE", "'Load CogVideoX VAE' (models/vae)"),
    "vae": ("a VAE", "core 'Load VAE' (models/vae)"),
    "text_encoder": ("a text encoder (CLIP / T5)", "core 'Load CLIP' (models/text_encoders)"),
}


def foreign_kind(state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """A key of :data:`FOREIGN_KINDS` when the keys are those of a well-known non-FrameBridge model, else None."""
    keys = list(state_dict)

    def has(fragment: str) -> bool:
        return any(fragment in k for k in keys)

    def starts(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("lora_up.") or has("lora_down.") or has(".lora_A.") or has(".lora_B."):
        return "lora"
    if has("input_hint_block.") or has("controlnet_cond_embedding."):
        return "controlnet"
    unet = ("model.diffusion_model.input_blocks.0.0.weight" in state_dict
            or "diffusion_model.input_blocks.0.0.weight" in state_dict)
    if unet and not has("temopral_conv"):
        return "sdxl" if starts("conditioner.embedders.") or has("diffusion_model.label_emb.") else "sd"
    if "input_blocks.0.0.weight" in state_dict and not has("temopral_conv"):
        return "sd_unet"
    if ("conv_in.weight" in state_dict and "down_blocks.0.resnets.0.conv1.weight" in state_dict
            and not has("temp_convs.") and "transformer_in.proj_in.weight" not in state_dict):
        return "sd_unet"
    if starts("encoder.") and starts("decoder.") and (has("conv_in.conv.") or has("time_conv")):
        return "cogvideox_vae"
    if (starts("encoder.") and starts("decoder.")) or starts("first_stage_model.") or starts("taesd_"):
        return "vae"
    if starts("text_model.") or starts("cond_stage_model.") or has("SelfAttention.q.weight") or starts("shared.weight"):
        return "text_encoder"
    return None


__all__ = [
    "CONTAINER_KEYS", "FOREIGN_KINDS", "foreign_kind", "FamilyDetector", "FamilyInfo", "STRIP_PREFIXES", "check_state_dict", "check_weight_values",
    "diffusers_weight_files",
    "load_diffusers_folder", "load_state_dict",
    "load_weights_strict", "normalize_state_dict",
]
