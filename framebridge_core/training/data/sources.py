"""Source photographs and procedural textures for the camera-motion dataset.

Every source is an RGB float tensor ``[3, h, w]`` in ``0..1`` whose short side is
:data:`SHORT_SIDE` pixels (antialiased resize), addressed by a stable name (the kinds are listed
in :func:`list_sources`). Procedural textures are always available, so the dataset works without
any optional package; scikit-image, scikit-learn, Pillow and the templates wheel are optional and
imported lazily. The train/test split is by source image and deterministic (:func:`split_of`), so
evaluation images are never trained on.
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
import re
import threading
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from ...errors import ConfigError

__all__ = [
    "SOURCE_KINDS",
    "SHORT_SIDE",
    "TEST_FRACTION",
    "DEFAULT_NUM_TEXTURES",
    "DEFAULT_IMAGE_SOURCE",
    "FORCED_TEST_SOURCES",
    "split_key",
    "split_of",
    "list_sources",
    "load_source",
    "make_texture",
]

#: Kinds of source, in the order they are listed.
SOURCE_KINDS: tuple[str, ...] = ("skimage", "sklearn", "templates", "textures")
#: Every source is resized so that its short side has this many pixels.
SHORT_SIDE = 160
#: Approximate share of split keys that go to the test split.
TEST_FRACTION = 0.12
#: Number of procedural textures listed by default.
DEFAULT_NUM_TEXTURES = 64
#: The photograph behind ``assets/default-image.png`` (coffee cup, CC0); never trained on.
DEFAULT_IMAGE_SOURCE = "skimage:coffee"
#: Sources that are in the test split whatever their hash says.
FORCED_TEST_SOURCES: frozenset[str] = frozenset({DEFAULT_IMAGE_SOURCE})

_SPLITS = ("train", "test", "all")
_MIN_SIDE = 96  # smaller real images are skipped
_MIN_STD = 0.03  # real images whose luminance std is below this are skipped (almost flat)

# scikit-image sample images that ship inside the wheel: name -> (file name, how to pick the image).
# ``cat`` is the same photograph as ``chelsea`` and is left out so it cannot leak across splits.
_SKIMAGE_IMAGES: dict[str, str] = {
    "astronaut": "astronaut.png",
    "brick": "brick.png",
    "camera": "camera.png",
    "cell": "cell.png",
    "chelsea": "chelsea.png",
    "clock": "clock_motion.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "colorwheel": "color.png",
    "eagle": "eagle.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "horse": "horse.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "logo": "logo.png",
    "microaneurysms": "microaneurysms.png",
    "moon": "moon.png",
    "page": "page.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
    "skin": "skin.jpg",
    "stereo_motorcycle": "motorcycle_left.png",
    "text": "text.png",
}

_lock = threading.RLock()
_cache: dict[str, torch.Tensor] = {}
_kind_names: dict[str, tuple[str, ...]] = {}
_skipped: dict[str, str] = {}


# ----------------------------------------------------------------------------- split


def split_key(name: str) -> str:
    """The string whose hash decides the split of ``name`` (groups near-duplicate sources)."""
    if name.startswith("templates:"):
        return re.sub(r"-\d+\.webp$", "", name)
    return name


def split_of(name: str) -> str:
    """``"train"`` or ``"test"`` for a source name; stable across runs, machines and Python versions.

    SHA-256 of the split key (:func:`split_key`: the name; for templates the template stem without
    its ``-1``/``-2`` suffix, so an edit workflow's input and output previews land in the same
    split) gives a number in ``[0, 1)``; below :data:`TEST_FRACTION` means test.
    :data:`FORCED_TEST_SOURCES` (the demo image) is always test.
    """
    if name in FORCED_TEST_SOURCES:
        return "test"
    digest = hashlib.sha256(("framebridge-split/" + split_key(name)).encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    return "test" if u < TEST_FRACTION else "train"


def _check_split(split: str) -> str:
    if split not in _SPLITS:
        raise ConfigError(
            f"split={split!r} is not a known split; allowed: {', '.join(_SPLITS)}. "
            "Pass split='train' for training and split='test' for evaluation."
        )
    return split


def _check_include(include: Iterable[str]) -> tuple[str, ...]:
    if isinstance(include, str):
        include = (include,)
    include = tuple(include)
    bad = [k for k in include if k not in SOURCE_KINDS]
    if bad:
        raise ConfigError(
            f"include={include!r} names unknown source kind(s) {bad}; allowed: "
            f"{', '.join(SOURCE_KINDS)}. Use e.g. include=('textures',) for a dataset that needs no "
            "optional package."
        )
    return include


# ----------------------------------------------------------------------------- conversion


def _to_tensor(array) -> torch.Tensor:
    """uint8/bool/float array ``[h, w]``, ``[h, w, 3]`` or ``[h, w, 4]`` -> float ``[3, h, w]`` in 0..1."""
    import numpy as np  # present whenever an optional image package is

    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.float32)
    elif np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float32) / float(np.iinfo(a.dtype).max)
    else:
        a = np.clip(a.astype(np.float32), 0.0, 1.0)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"unsupported image array shape {a.shape}")
    t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)
    if t.shape[0] in (2, 4):  # composite over white
        alpha = t[-1:]
        t = t[:-1] * alpha + (1.0 - alpha)
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return t.contiguous()


def _resize_short_side(img: torch.Tensor, short_side: int = SHORT_SIDE) -> torch.Tensor:
    h, w = img.shape[-2:]
    s = short_side / min(h, w)
    size = (max(1, round(h * s)), max(1, round(w * s)))
    if size == (h, w):
        return img.clone()
    out = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return out.clamp_(0.0, 1.0).contiguous()


def _finish(img: torch.Tensor) -> torch.Tensor:
    """Check a decoded real image and bring it to the common short side."""
    h, w = img.shape[-2:]
    if min(h, w) < _MIN_SIDE:
        raise ValueError(f"too small ({w}x{h} < {_MIN_SIDE} px)")
    out = _resize_short_side(img)
    luma = (0.299 * out[0] + 0.587 * out[1] + 0.114 * out[2]).std().item()
    if luma < _MIN_STD:
        raise ValueError(f"almost flat (luminance std {luma:.3f})")
    return out


# ----------------------------------------------------------------------------- real images


def _skimage_catalog() -> dict[str, Callable[[], torch.Tensor]]:
    try:
        import skimage.data as skdata
    except Exception:
        return {}
    dirs = [os.path.dirname(os.path.abspath(skdata.__file__))]
    data_dir = getattr(skdata, "data_dir", None)
    if isinstance(data_dir, str):
        dirs.append(data_dir)
    out = {}
    for name, fname in _SKIMAGE_IMAGES.items():
        fn = getattr(skdata, name, None)
        # Only images already on disk: a pooch download would need the network.
        if fn is None or not any(os.path.isfile(os.path.join(d, fname)) for d in dirs):
            continue

        def load(fn=fn, name=name):
            img = fn()
            if name == "stereo_motorcycle":
                img = img[0]
            return _to_tensor(img)

        out[f"skimage:{name}"] = load
    return out


def _sklearn_catalog() -> dict[str, Callable[[], torch.Tensor]]:
    try:
        import sklearn.datasets as skd
    except Exception:
        return {}
    images_dir = os.path.join(os.path.dirname(os.path.abspath(skd.__file__)), "images")
    out = {}
    for path in sorted(glob.glob(os.path.join(images_dir, "*.jpg"))):
        fname = os.path.basename(path)
        out[f"sklearn:{fname}"] = lambda fname=fname: _to_tensor(skd.load_sample_image(fname))
    return out


def _templates_catalog() -> dict[str, Callable[[], torch.Tensor]]:
    try:
        import comfyui_workflow_templates_media_image as pkg
    except Exception:
        return {}
    root = os.path.join(os.path.dirname(os.path.abspath(pkg.__file__)), "templates")
    out = {}
    for path in sorted(glob.glob(os.path.join(root, "*.webp"))):

        def load(path=path):
            from PIL import Image

            with Image.open(path) as im:
                im.seek(0)  # first frame of animated files
                w, h = im.size
                if min(w, h) < _MIN_SIDE:
                    raise ValueError(f"too small ({w}x{h})")
                im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
                # Cheap integer pre-reduction of big files before the exact antialiased resize.
                factor = int(min(w, h) // (2 * SHORT_SIDE))
                if factor >= 2:
                    im = im.reduce(factor)
                import numpy as np

                return _to_tensor(np.asarray(im))

        out[f"templates:{os.path.basename(path)}"] = load
    return out


_CATALOG_BUILDERS = {"skimage": _skimage_catalog, "sklearn": _sklearn_catalog, "templates": _templates_catalog}
_catalogs: dict[str, dict[str, Callable[[], torch.Tensor]]] = {}


def _catalog(kind: str) -> dict[str, Callable[[], torch.Tensor]]:
    with _lock:
        if kind not in _catalogs:
            _catalogs[kind] = _CATALOG_BUILDERS[kind]()
        return _catalogs[kind]


def _scan_kind(kind: str) -> tuple[str, ...]:
    """Names of one real kind that load and pass the filters (loads and caches them once)."""
    with _lock:
        if kind in _kind_names:
            return _kind_names[kind]
        names = []
        for name, loader in _catalog(kind).items():
            if name not in _cache:
                try:
                    _cache[name] = _finish(loader())
                except Exception as exc:  # missing file, download needed, decode error, filters
                    _skipped[name] = f"{type(exc).__name__}: {exc}"[:200]
                    continue
            names.append(name)
        _kind_names[kind] = tuple(sorted(names))
        return _kind_names[kind]


# ----------------------------------------------------------------------------- textures


def _value_noise(g: torch.Generator, channels: int, h: int, w: int, base: int, octaves: int) -> torch.Tensor:
    """Smooth multi-octave value noise ``[channels, h, w]``, roughly zero-mean."""
    out = torch.zeros(channels, h, w)
    amp = 1.0
    for o in range(octaves):
        cells = base * 2**o
        gh, gw = max(2, round(cells * h / min(h, w))), max(2, round(cells * w / min(h, w)))
        grid = torch.rand(1, channels, gh + 1, gw + 1, generator=g) * 2 - 1
        up = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)[0]
        out += amp * up
        amp *= 0.55
    return out


def _normalize01(x: torch.Tensor) -> torch.Tensor:
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-6)


def _rand_color(g: torch.Generator) -> torch.Tensor:
    return torch.rand(3, 1, 1, generator=g)


def _coords(h: int, w: int):
    ys = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w) + 0.5
    xs = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w) + 0.5
    return xs, ys


def _u(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def _tex_plasma(g, h, w):
    n = _value_noise(g, 3, h, w, base=2, octaves=5)
    mix = torch.randn(3, 3, generator=g)
    n = torch.einsum("ij,jhw->ihw", mix, n)
    freq = _u(g, 1.5, 4.0)
    return _normalize01(torch.sin(freq * n) + 0.35 * n)


def _tex_gradient(g, h, w):
    xs, ys = _coords(h, w)
    a = _u(g, 0, 2 * math.pi)
    t = (xs * math.cos(a) + ys * math.sin(a))
    t = _normalize01(t[None])[0]
    c0, c1, c2 = _rand_color(g), _rand_color(g), _rand_color(g)
    img = torch.where(t < 0.5, c0 + (c1 - c0) * (2 * t), c1 + (c2 - c1) * (2 * t - 1))
    for _ in range(2):  # a few soft radial blobs
        cx, cy, r = _u(g, 0, w), _u(g, 0, h), _u(g, 0.1, 0.3) * min(h, w)
        blob = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * r * r))
        img = img + (_rand_color(g) - img) * (0.9 * blob)
    img = img + 0.12 * _value_noise(g, 3, h, w, base=6, octaves=3)
    return img.clamp(0, 1)


def _shapes_on(g, img, h, w, count):
    xs, ys = _coords(h, w)
    for _ in range(count):
        kind = int(torch.randint(3, (1,), generator=g))
        cx, cy = _u(g, 0, w), _u(g, 0, h)
        size = _u(g, 0.04, 0.25) * min(h, w)
        soft = _u(g, 0.5, 2.0)
        if kind == 0:  # disc
            d = size - torch.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
        elif kind == 1:  # rotated rectangle
            a = _u(g, 0, math.pi)
            u = (xs - cx) * math.cos(a) + (ys - cy) * math.sin(a)
            v = -(xs - cx) * math.sin(a) + (ys - cy) * math.cos(a)
            d = torch.minimum(size - u.abs(), size * _u(g, 0.3, 1.0) - v.abs())
        else:  # ring
            r = torch.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
            d = size * 0.25 - (r - size).abs()
        mask = torch.sigmoid(d / soft)[None]
        img = img * (1 - mask) + _rand_color(g) * mask
    return img


def _tex_shapes(g, h, w):
    bg = _rand_color(g) + 0.25 * _value_noise(g, 3, h, w, base=2, octaves=3)
    return _shapes_on(g, bg.clamp(0, 1), h, w, int(torch.randint(10, 30, (1,), generator=g))).clamp(0, 1)


def _tex_stripes(g, h, w):
    xs, ys = _coords(h, w)
    img = _rand_color(g).expand(3, h, w).clone()
    warp = 6.0 * _value_noise(g, 1, h, w, base=2, octaves=2)[0]
    for _ in range(int(torch.randint(1, 3, (1,), generator=g))):
        a = _u(g, 0, math.pi)
        period = _u(g, 7, 30)
        phase = (xs * math.cos(a) + ys * math.sin(a) + warp) * (2 * math.pi / period)
        wave = torch.sin(phase)
        if _u(g) < 0.5:
            wave = torch.tanh(4 * wave)  # harder edges
        m = (0.5 + 0.5 * wave)[None]
        img = img * (1 - 0.8 * m) + _rand_color(g) * (0.8 * m)
    return (img + 0.05 * _value_noise(g, 3, h, w, base=8, octaves=2)).clamp(0, 1)


def _tex_checker(g, h, w):
    xs, ys = _coords(h, w)
    a = _u(g, 0, math.pi / 2)
    cell = _u(g, 8, 28)
    warp = _u(g, 0, 10) * _value_noise(g, 2, h, w, base=2, octaves=2)
    u = (xs * math.cos(a) + ys * math.sin(a) + warp[0]) / cell
    v = (-xs * math.sin(a) + ys * math.cos(a) + warp[1]) / cell
    chk = (torch.sin(math.pi * u) * torch.sin(math.pi * v))
    m = torch.sigmoid(chk * 12)[None]
    c0, c1 = _rand_color(g), _rand_color(g)
    shade = 0.15 * _value_noise(g, 1, h, w, base=3, octaves=2)
    return (c0 * (1 - m) + c1 * m + shade).clamp(0, 1)


def _tex_mixed(g, h, w):
    img = 0.5 + 0.5 * (_tex_plasma(g, h, w) - 0.5)
    return _shapes_on(g, img, h, w, int(torch.randint(5, 15, (1,), generator=g))).clamp(0, 1)


_TEXTURES = (_tex_plasma, _tex_gradient, _tex_shapes, _tex_stripes, _tex_checker, _tex_mixed)


def make_texture(k: int, *, short_side: int = SHORT_SIDE) -> torch.Tensor:
    """Procedural texture number ``k`` as ``[3, h, w]`` in 0..1 (same output for the same ``k``).

    The kind cycles with ``k`` (plasma noise, gradients, shapes, stripes, checker, shapes over
    noise); the aspect ratio is between 1:1 and 3:2 (landscape or portrait).
    """
    if int(k) != k or k < 0:
        raise ConfigError(f"texture index k={k!r} is invalid; allowed: an integer >= 0.")
    k = int(k)
    g = torch.Generator().manual_seed(0x5EED_7E57 + 7919 * k)
    aspect = _u(g, 1.0, 1.5)
    if _u(g) < 0.5:
        h, w = short_side, round(short_side * aspect)
    else:
        h, w = round(short_side * aspect), short_side
    img = _TEXTURES[k % len(_TEXTURES)](g, h, w)
    return img.to(torch.float32).contiguous()


# ----------------------------------------------------------------------------- public listing/loading


def list_sources(
    split: str = "train",
    *,
    include: Iterable[str] = SOURCE_KINDS,
    num_textures: int = DEFAULT_NUM_TEXTURES,
) -> list[str]:
    """Names of the sources of one split (``"train"``, ``"test"`` or ``"all"``), in a stable order.

    * ``skimage:<name>`` -- scikit-image's sample images that ship inside the wheel (images that
      would need a download are skipped without touching the network);
    * ``sklearn:<file>`` -- scikit-learn's ``load_sample_images()`` (``china.jpg``, ``flower.jpg``);
    * ``templates:<file>`` -- the ``.webp`` previews inside ``comfyui_workflow_templates_media_image``
      (first frame of animated files; files under 96 px or nearly flat are skipped);
    * ``texture:<k>`` -- seeded procedural textures (plasma noise, gradients, shapes, stripes,
      checkers), always available.

    Real kinds whose package is missing contribute nothing. Listing a real kind loads (and caches)
    its images once, since only images that decode and pass the filters are listed.
    """
    _check_split(split)
    include = _check_include(include)
    if int(num_textures) != num_textures or num_textures < 0:
        raise ConfigError(f"num_textures={num_textures!r} is invalid; allowed: an integer >= 0.")
    names: list[str] = []
    for kind in SOURCE_KINDS:
        if kind not in include:
            continue
        if kind == "textures":
            names.extend(f"texture:{k}" for k in range(int(num_textures)))
        else:
            names.extend(_scan_kind(kind))
    if split != "all":
        names = [n for n in names if split_of(n) == split]
    return names


def unavailable_kinds(include: Iterable[str] = SOURCE_KINDS) -> list[str]:
    """The real-photo kinds of ``include`` that yield no image here (their package is missing)."""
    return [k for k in _check_include(include) if k != "textures" and not _scan_kind(k)]


def warn_unavailable(include: Iterable[str] = SOURCE_KINDS, stream=None) -> list[str]:
    """Say loudly on stderr which requested photo sources are missing (data would be textures only)."""
    import sys

    missing = unavailable_kinds(include)
    if missing:
        (stream or sys.stderr).write(
            f"WARNING: image source(s) {', '.join(missing)} are unavailable (package not installed): the "
            f"camera-motion clips will come from the remaining sources only, which changes what a model learns "
            f"and what a benchmark measures. Install them with `pip install -e \".[train]\"`, or pass "
            f"--sources to choose the sources explicitly.\n")
    return missing


def load_source(name: str) -> torch.Tensor:
    """The source image ``[3, h, w]`` (float32, 0..1, short side :data:`SHORT_SIDE`) for a name.

    Results are cached in memory for the life of the process; treat the tensor as read-only.
    """
    with _lock:
        hit = _cache.get(name)
        if hit is not None:
            return hit
        kind, sep, rest = name.partition(":")
        if not sep:
            raise ConfigError(
                f"source name {name!r} has no kind prefix; expected 'skimage:<name>', "
                "'sklearn:<file>', 'templates:<file>' or 'texture:<k>' (see list_sources())."
            )
        if kind == "texture":
            if not rest.isdigit():
                raise ConfigError(f"source name {name!r}: the texture index must be an integer >= 0, e.g. 'texture:3'.")
            img = make_texture(int(rest))
        elif kind in _CATALOG_BUILDERS:
            if name in _skipped:
                raise ConfigError(f"source {name!r} is unavailable here ({_skipped[name]}); pick one from list_sources().")
            loader = _catalog(kind).get(name)
            if loader is None:
                raise ConfigError(
                    f"source {name!r} is not available in this environment (package missing or no such "
                    "image); pick one from list_sources()."
                )
            try:
                img = _finish(loader())
            except Exception as exc:
                _skipped[name] = f"{type(exc).__name__}: {exc}"[:200]
                raise ConfigError(f"source {name!r} could not be loaded ({_skipped[name]}); pick another.") from exc
        else:
            raise ConfigError(
                f"source name {name!r} has unknown kind {kind!r}; allowed kinds: skimage, sklearn, "
                "templates, texture."
            )
        _cache[name] = img
        return img
