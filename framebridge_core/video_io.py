"""Reading an image and writing a generated clip: animated WebP/GIF (PIL), MP4 (PyAV), contact sheet.

PIL is imported lazily (ComfyUI ships it; the standalone extra installs it); PyAV only for MP4.
Frames are ``[F, 3, H, W]`` tensors in [-1, 1], the value range of the pixel-space models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .errors import ConfigError

ANIMATION_SUFFIXES = (".webp", ".gif", ".mp4")


def pil_to_uint8(img) -> torch.Tensor:
    """A PIL image as ``[H, W, 3]`` uint8 (RGB)."""
    img = img.convert("RGB")
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).reshape(img.height, img.width, 3)


def load_image(path, size: int) -> torch.Tensor:
    """An RGB image as ``[3, size, size]`` in [-1, 1]: centre-cropped square, area-resized."""
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"image file not found: '{p}'. Pass --image with a PNG/JPEG/WebP path.")
    try:
        img = Image.open(p)
        img.seek(0)
        pixels = pil_to_uint8(img)
    except Exception as e:  # PIL raises many types for bad files
        raise ConfigError(f"'{p}' is not a readable image ({type(e).__name__}: {e}).") from e
    return image_to_frame(pixels.permute(2, 0, 1).float() / 255.0, size)


def image_to_frame(image: torch.Tensor, size: int) -> torch.Tensor:
    """``[3, H, W]`` in 0..1 -> ``[3, size, size]`` in [-1, 1] (centre crop, antialiased resize)."""
    _, h, w = image.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    square = image[:, top:top + s, left:left + s][None]
    if s != size:
        square = F.interpolate(square, size=(size, size), mode="bilinear", antialias=s > size,
                               align_corners=False)
    return (square[0].clamp(0, 1) * 2 - 1)


def to_uint8(frames: torch.Tensor, scale: int = 1) -> torch.Tensor:
    """``[F, 3, H, W]`` in [-1, 1] -> ``[F, H*scale, W*scale, 3]`` uint8 (bilinear upscaling)."""
    x = ((frames.float().clamp(-1, 1) + 1) * 127.5)
    if scale != 1:
        x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _pil_frames(frames_u8: torch.Tensor):
    from PIL import Image

    return [Image.fromarray(f.numpy()) for f in frames_u8]


def write_animation(frames: torch.Tensor, path, fps: int = 8, scale: int = 1) -> Path:
    """Write ``[F, 3, H, W]`` as an animated ``.webp`` / ``.gif`` (PIL) or ``.mp4`` (PyAV, H.264)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in ANIMATION_SUFFIXES:
        raise ConfigError(f"cannot write '{p.name}': use one of {', '.join(ANIMATION_SUFFIXES)}.")
    u8 = to_uint8(frames, scale)
    p.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".mp4":
        _write_mp4(u8, p, fps)
        return p
    images = _pil_frames(u8)
    kwargs = dict(save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    if suffix == ".webp":
        kwargs.update(lossless=False, quality=90, method=4)
    images[0].save(p, **kwargs)
    return p


def _write_mp4(u8: torch.Tensor, path: Path, fps: int) -> None:
    try:
        import av
    except ImportError as e:
        raise ConfigError("writing .mp4 needs PyAV (pip install av); or write .webp / .gif instead.") from e
    h, w = u8.shape[1:3]
    if h % 2 or w % 2:  # yuv420p needs even sizes
        u8 = F.pad(u8.permute(0, 3, 1, 2), (0, w % 2, 0, h % 2), mode="replicate").permute(0, 2, 3, 1)
        h, w = u8.shape[1:3]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "18"}
        for f in u8:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f.numpy(), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def contact_sheet(rows: Sequence[torch.Tensor], path, scale: int = 1, gap: int = 2) -> Path:
    """A PNG grid: one row per clip ``[F, 3, H, W]``, frames left to right."""
    from PIL import Image

    strips = [to_uint8(r, scale) for r in rows]
    n = max(s.shape[0] for s in strips)
    h, w = strips[0].shape[1:3]
    sheet = torch.full((len(strips) * (h + gap) - gap, n * (w + gap) - gap, 3), 255, dtype=torch.uint8)
    for r, s in enumerate(strips):
        for c in range(s.shape[0]):
            sheet[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = s[c]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet.numpy()).save(p)
    return p


def read_animation(path) -> torch.Tensor:
    """Frames of an animated WebP/GIF as ``[F, H, W, 3]`` uint8 (for tests and checks)."""
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        frames = [pil_to_uint8(f) for f in ImageSequence.Iterator(im)]
    return torch.stack(frames)
