"""A small real-data set: a folder of clips and a ``metadata.csv`` of their captions / labels.

    my_clips/
      metadata.csv          video,caption,label[,latents]
      walk/                 a clip as numbered frames (.png / .jpg / .webp), in name order
      surf.gif              ... or one animation (.gif, .webp; .mp4 with PyAV installed)
      walk.safetensors      optional: precomputed latents and embeddings of the clip

Columns (paths are relative to the CSV's folder):

* ``video``: the clip; the first ``frames`` frames (every ``stride``-th) are used, each centre-
  cropped to a square and resized to ``size``. Clips shorter than that are refused.
* ``label``: a class name; classes are numbered in sorted order (the trained model's class table).
* ``caption``: text, kept for the record (text models train on its precomputed embedding).
* ``latents``: a ``.safetensors`` with the clip's precomputed tensors for the large families:
  ``latent`` (the VAE latent in the family's layout: VideoCrafter ``[C, T, H, W]``, CogVideoX and
  Latte ``[F, C, H, W]``), ``text`` (the caption's text-encoder tokens; Latte uses ``label`` instead),
  for VideoCrafter ``image`` (CLIP tokens of frame 0) and optionally ``fs`` (frame stride) and
  ``prior`` (the prior latent; default: frame 0 repeated). A ``null.safetensors`` next to the CSV
  with ``text`` (the empty prompt's embedding) enables text dropout for classifier-free guidance.

Pixel clips (no ``latents`` column) train the pack's tiny models (``--family tiny --data <folder>``)
with the labels as classes. Batches are drawn with a generator, so runs are reproducible and every
process of a distributed run renders only its shard (:meth:`VideoFolderDataset.draw_plan`,
:meth:`VideoFolderDataset.render_plan`).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from ...errors import ConfigError

CSV_NAME = "metadata.csv"
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
ANIMATION_SUFFIXES = (".gif", ".webp")


def _read_frames(path: Path) -> list:
    """PIL images of a clip: a folder of frames, an animated GIF/WebP, or an .mp4 (PyAV)."""
    from PIL import Image, ImageSequence

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        if not files:
            raise ConfigError(f"clip folder {path} has no frames; allowed: {', '.join(FRAME_SUFFIXES)} files.")
        out = []
        for p in files:
            with Image.open(p) as im:
                out.append(im.convert("RGB"))
        return out
    if not path.is_file():
        raise ConfigError(f"clip {path} does not exist; fix the 'video' column of {CSV_NAME}.")
    suffix = path.suffix.lower()
    if suffix == ".mp4":
        try:
            import av
        except ImportError as e:
            raise ConfigError(f"reading {path.name} needs PyAV (pip install av); or store the clip as a folder "
                              f"of frames, .gif or .webp.") from e
        with av.open(str(path)) as container:
            return [f.to_image().convert("RGB") for f in container.decode(video=0)]
    if suffix in ANIMATION_SUFFIXES:
        with Image.open(path) as im:
            return [f.convert("RGB") for f in ImageSequence.Iterator(im)]
    raise ConfigError(f"clip {path.name} has an unsupported type {suffix!r}; allowed: a folder of frames, "
                      f".gif, .webp, .mp4.")


def _to_tensor(img, size: int) -> torch.Tensor:
    """A PIL image centre-cropped to a square and resized: ``[3, size, size]`` in [-1, 1]."""
    import numpy as np

    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    img = img.crop((left, top, left + s, top + s))
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float()[None] / 255.0
    if s != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x[0] * 2 - 1).clamp(-1, 1)


class VideoFolderDataset:
    """Clips listed in ``<root>/metadata.csv`` (see the module docstring).

    ``sample_batch(n, generator)`` returns ``(video [n, frames, 3, size, size], labels [n])`` for
    pixel clips and a dict of stacked tensors for ``latents`` rows; ``motions`` names the classes.
    """

    def __init__(self, root, size: int = 64, frames: int = 16, stride: int = 1, csv_name: str = CSV_NAME,
                 cache: bool = True):
        self.root = Path(root)
        table = self.root / csv_name if self.root.is_dir() else self.root
        if not table.is_file():
            raise ConfigError(f"no {csv_name} in {self.root}; a video folder needs a CSV with a 'video' column "
                              f"(and 'label' and/or 'caption', optionally 'latents').")
        self.base = table.parent
        for name, v in (("size", size), ("frames", frames), ("stride", stride)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name}={v!r} is invalid; allowed: an integer >= 1.")
        self.size, self.frames, self.stride, self.cache = size, frames, stride, cache
        with open(table, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            self.rows = [dict(r) for r in reader]
        if "video" not in cols and "latents" not in cols:
            raise ConfigError(f"{table} has columns {cols}; it needs 'video' (clips) or 'latents' (precomputed "
                              f"tensors), plus 'label' and/or 'caption'.")
        if not self.rows:
            raise ConfigError(f"{table} lists no clips; add one row per clip.")
        self.latent_mode = "latents" in cols and all(r.get("latents") for r in self.rows)
        labels = [r.get("label", "") or "" for r in self.rows]
        self.motions = tuple(sorted(set(labels))) if any(labels) else ("clip",)
        self.labels = torch.tensor([self.motions.index(l) if any(labels) else 0 for l in labels], dtype=torch.long)
        self.captions = [r.get("caption", "") or "" for r in self.rows]
        self._cache: dict = {}
        null = self.base / "null.safetensors"
        self.null_text: Optional[torch.Tensor] = None
        if null.is_file():
            from safetensors.torch import load_file

            self.null_text = load_file(str(null)).get("text")
        self.description = f"video folder {self.base.name} ({len(self.rows)} clips)"
        self.class_kind = "label"

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def clip_shape(self) -> tuple:
        """The shape of one pixel clip (``latents`` rows have their own shapes)."""
        return (self.frames, 3, self.size, self.size)

    def clip(self, index: int):
        """Row ``index``: a pixel clip ``[frames, 3, size, size]``, or the dict of its latents file."""
        if index in self._cache:
            return self._cache[index]
        row = self.rows[index]
        if self.latent_mode:
            from ...checkpoints import load_state_dict

            item, _ = load_state_dict(self.base / row["latents"])   # safetensors, or weights_only torch files
        else:
            imgs = _read_frames(self.base / row["video"])
            need = (self.frames - 1) * self.stride + 1
            if len(imgs) < need:
                raise ConfigError(f"clip {row['video']} has {len(imgs)} frames; frames={self.frames} with "
                                  f"stride={self.stride} needs {need}. Use a longer clip or lower --frames/--stride.")
            item = torch.stack([_to_tensor(imgs[i * self.stride], self.size) for i in range(self.frames)])
        if self.cache:
            self._cache[index] = item
        return item

    # -- batches (the same generator use whatever the shard) ---------------------------------------
    def draw_plan(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise ConfigError(f"n={n!r} is invalid; allowed: an integer >= 1 (clips per batch).")
        return torch.randint(len(self.rows), (int(n),), generator=generator)

    def render_plan(self, plan: torch.Tensor, lo: int, hi: int):
        idx = [int(i) for i in plan[lo:hi]]
        if self.latent_mode:
            items = [self.clip(i) for i in idx]
            keys = set(items[0])
            for k in keys:
                shapes = {tuple(it[k].shape) for it in items if k in it}
                if len(shapes) != 1 or any(k not in it for it in items):
                    raise ConfigError(f"the latents files disagree on {k!r} (shapes {sorted(shapes)}); every clip of a "
                                      f"batch needs the same tensors and shapes.")
            return {k: torch.stack([it[k] for it in items]) for k in keys}
        return torch.stack([self.clip(i) for i in idx]), self.labels[idx]

    def sample_batch(self, n: int, generator: Optional[torch.Generator] = None):
        plan = self.draw_plan(n, generator)
        return self.render_plan(plan, 0, len(plan))


__all__ = ["CSV_NAME", "VideoFolderDataset"]
