"""Video quality metrics of the quality benchmark: PSNR, SSIM, Fréchet distance, motion classifier.

Pure torch (kornia for SSIM, imported when first used). Videos are ``[B, F, 3, H, W]`` in
``[-1, 1]`` (data range 2); single images ``[B, 3, H, W]`` work as well. The Fréchet distance is
taken in the 64-d features of :class:`MotionClassifier`, a small network trained on ground-truth
camera-motion clips (:func:`train_motion_classifier`) whose input makes motion easy to see, so the
distance compares how clips move as well as what they show.
"""

from __future__ import annotations

import json
import time
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, ShapeError

__all__ = [
    "DATA_RANGE",
    "SSIM_WINDOW",
    "FEATURE_DIM",
    "psnr",
    "ssim",
    "gaussian_stats",
    "frechet_distance",
    "frechet_distance_from_stats",
    "MotionClassifier",
    "train_motion_classifier",
    "classifier_accuracy",
    "extract_features",
    "save_classifier",
    "load_classifier",
]

#: Data range of videos in [-1, 1].
DATA_RANGE = 2.0
#: Taps of the SSIM Gaussian window (σ = 1.5) for 32-pixel frames.
SSIM_WINDOW = 7
#: Width of the classifier features the Fréchet distance is computed in.
FEATURE_DIM = 64


def _check_pair(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    if a.shape != b.shape:
        raise ShapeError(f"{name}: the two inputs have shapes {tuple(a.shape)} and {tuple(b.shape)}; they must match.")
    if a.dim() < 3:
        raise ShapeError(f"{name}: expected images [..., C, H, W], got shape {tuple(a.shape)}.")


# ----------------------------------------------------------------------------- PSNR / SSIM


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = DATA_RANGE,
         min_mse: Optional[float] = None) -> torch.Tensor:
    """PSNR in dB of every image: ``[B, F, C, H, W]`` → ``[B, F]`` (``[B, C, H, W]`` → ``[B]``).

    ``10 log10(range² / MSE)``. ``min_mse`` floors the mean squared error (default: the 8-bit
    quantisation noise ``(data_range / 255)² / 12``, so identical images give 58.92 dB, a perfectly
    stored 8-bit frame, instead of infinity, and a mean over frames stays finite); pass 0 for the
    raw value (identical images then give ``inf``).
    """
    _check_pair(a, b, "psnr")
    if min_mse is None:
        min_mse = (data_range / 255.0) ** 2 / 12.0
    mse = (a.double() - b.double()).pow(2).mean(dim=(-3, -2, -1))
    mse = mse.clamp(min=min_mse) if min_mse > 0 else mse
    return (10.0 * torch.log10(data_range**2 / mse)).float()


def ssim(a: torch.Tensor, b: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0),
         window: int = SSIM_WINDOW) -> torch.Tensor:
    """Mean SSIM of every image: ``[B, F, C, H, W]`` → ``[B, F]`` (``[B, C, H, W]`` → ``[B]``).

    Inputs spanning ``value_range`` (default ``[-1, 1]``) are mapped to ``[0, 1]`` (SSIM's luminance
    term is not shift invariant); the map is :func:`kornia.metrics.ssim` with a ``window``-tap
    Gaussian (σ = 1.5; 7 taps by default, suited to 32-pixel frames), ``max_val = 1`` and reflect
    padding (``"same"``), so that border pixels, where panned-in content appears, count too.
    """
    from kornia.metrics import ssim as kornia_ssim

    _check_pair(a, b, "ssim")
    lead = a.shape[:-3]
    c, h, w = a.shape[-3:]
    if min(h, w) <= window // 2:
        raise ShapeError(f"ssim: frames of {w}x{h} px are too small for a {window}-tap window.")
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ConfigError(f"ssim: value_range must be (low, high) with high > low, got {value_range!r}.")
    x = (a.reshape(-1, c, h, w).float() - lo) / (hi - lo)
    y = (b.reshape(-1, c, h, w).float() - lo) / (hi - lo)
    m = kornia_ssim(x, y, window, max_val=1.0, padding="same")
    return m.mean(dim=(1, 2, 3)).reshape(lead)


# ----------------------------------------------------------------------------- Fréchet distance


def blockiness(video: torch.Tensor, patch: int) -> torch.Tensor:
    """Patch-grid strength per frame: the mean absolute horizontal gradient across patch boundaries
    over the mean inside patches (1.0 = no grid; natural video ≈ 1.0).

    ``video [..., F, C, H, W]`` -> ``[F]``; the gradient between columns j and j+1 crosses a boundary
    when ``(j + 1) % patch == 0``.
    """
    if video.ndim < 4 or video.shape[-1] <= patch or video.shape[-1] % patch:
        raise ShapeError(f"blockiness needs [..., F, C, H, W] frames whose width is a multiple of the patch "
                         f"size {patch} (and wider), got {tuple(video.shape)}")
    grad = (video[..., 1:] - video[..., :-1]).abs().float()
    cols = torch.arange(grad.shape[-1])
    edge = (cols + 1) % patch == 0
    per_frame = grad.movedim(-4, 0).reshape(grad.shape[-4], -1, grad.shape[-1])   # [F, rows, W-1]
    return per_frame[..., edge].mean(dim=(1, 2)) / per_frame[..., ~edge].mean(dim=(1, 2)).clamp_min(1e-12)


def high_frequency_energy(video: torch.Tensor) -> torch.Tensor:
    """Per-frame sharpness: the mean squared difference between each frame and its 3×3 box blur,
    ``[..., F, C, H, W]`` -> ``[F]`` (compare with the ground truth's; blur lowers it, noise raises it)."""
    if video.ndim < 4:
        raise ShapeError(f"high_frequency_energy needs [..., F, C, H, W], got {tuple(video.shape)}")
    frames = video.float().movedim(-4, 0)
    flat = frames.reshape(-1, 1, *frames.shape[-2:])
    blur = F.avg_pool2d(F.pad(flat, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return (flat - blur).pow(2).reshape(frames.shape[0], -1).mean(dim=1)


def gaussian_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) covariance of ``[N, D]`` features, in float64."""
    if feats.dim() != 2 or feats.shape[0] < 2:
        raise ShapeError(f"expected features [N >= 2, D], got shape {tuple(feats.shape)}.")
    x = feats.detach().double().cpu()
    mu = x.mean(0)
    xc = x - mu
    cov = xc.T @ xc / (x.shape[0] - 1)
    return mu, cov


def _sym(m: torch.Tensor) -> torch.Tensor:
    return 0.5 * (m + m.T)


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (eigh, negative rounding clipped)."""
    w, v = torch.linalg.eigh(_sym(m))
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance_from_stats(mu_a: torch.Tensor, cov_a: torch.Tensor, mu_b: torch.Tensor,
                                cov_b: torch.Tensor) -> float:
    """Fréchet distance between the Gaussians ``N(mu_a, cov_a)`` and ``N(mu_b, cov_b)``.

    ``|μ_a − μ_b|² + tr(Σ_a + Σ_b − 2 (Σ_a^½ Σ_b Σ_a^½)^½)`` in float64: ``tr((Σ_a Σ_b)^½)`` is
    computed as ``tr((Σ_a^½ Σ_b Σ_a^½)^½)`` (a similar, symmetric PSD matrix), i.e. the sum of the
    square roots of its clipped eigenvalues. The matrix square roots come from symmetric
    eigendecompositions (``eigh``) with negative rounding eigenvalues clipped to zero, which is
    exact for positive semi-definite covariances, also rank deficient ones (fewer samples than
    feature dimensions).
    """
    mu_a, mu_b = mu_a.double(), mu_b.double()
    cov_a, cov_b = _sym(cov_a.double()), _sym(cov_b.double())
    if mu_a.shape != mu_b.shape or cov_a.shape != cov_b.shape or cov_a.shape != (mu_a.numel(),) * 2:
        raise ShapeError(f"inconsistent Gaussian statistics: means {tuple(mu_a.shape)}/{tuple(mu_b.shape)}, "
                         f"covariances {tuple(cov_a.shape)}/{tuple(cov_b.shape)}.")
    root_a = _sqrt_psd(cov_a)
    middle = _sym(root_a @ cov_b @ root_a)
    tr_sqrt = torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum()
    value = (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2.0 * tr_sqrt
    return max(float(value), 0.0)


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N_a, D]`` and ``[N_b, D]``."""
    if feats_a.dim() != 2 or feats_b.dim() != 2 or feats_a.shape[1] != feats_b.shape[1]:
        raise ShapeError(f"expected features [N, D] with the same D, got {tuple(feats_a.shape)} "
                         f"and {tuple(feats_b.shape)}.")
    return frechet_distance_from_stats(*gaussian_stats(feats_a), *gaussian_stats(feats_b))


# ----------------------------------------------------------------------------- motion classifier


def _block(cin: int, cout: int, stride) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1),
                         nn.GroupNorm(8, cout), nn.SiLU())


class MotionClassifier(nn.Module):
    """Camera-motion classifier on ``[B, F, 3, H, W]`` clips in ``[-1, 1]`` (F ≥ 4, any square size).

    The input is the clip, its frame-to-frame differences and its difference to frame 0 (9
    channels), scaled so motion is as visible as content; three 3D convolutions (the last two halve
    H and W, the last also F) are pooled adaptively to ``2 × 2 × 2`` (so the position of the motion
    in the frame survives: zoom-in and zoom-out differ only in where things move), then a 64-d
    feature layer (:meth:`features`) and a linear class head. About 215k parameters.
    """

    def __init__(self, num_classes: int = 9, width: Sequence[int] = (24, 48, 96), feature_dim: int = FEATURE_DIM):
        super().__init__()
        c1, c2, c3 = (int(w) for w in width)
        self.num_classes, self.width, self.feature_dim = int(num_classes), (c1, c2, c3), int(feature_dim)
        self.body = nn.Sequential(
            _block(9, c1, (1, 1, 1)),
            _block(c1, c2, (1, 2, 2)),
            _block(c2, c3, (2, 2, 2)),
            nn.AdaptiveAvgPool3d((2, 2, 2)),
            nn.Flatten(),
        )
        self.fc = nn.Linear(c3 * 8, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, self.num_classes)

    def config(self) -> dict:
        return {"num_classes": self.num_classes, "width": list(self.width), "feature_dim": self.feature_dim}

    @staticmethod
    def prepare(video: torch.Tensor) -> torch.Tensor:
        """``[B, F, 3, H, W]`` → network input ``[B, 9, F, H, W]``."""
        if video.dim() != 5 or video.shape[2] != 3 or video.shape[1] < 4:
            raise ShapeError(f"the motion classifier takes clips [B, F >= 4, 3, H, W], got {tuple(video.shape)}.")
        x = video.float()
        step = torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], dim=1)
        drift = x - x[:, :1]
        return torch.cat([x, 4.0 * step, 2.0 * drift], dim=2).transpose(1, 2).contiguous()

    def features(self, video: torch.Tensor) -> torch.Tensor:
        """The 64-d penultimate features ``[B, 64]``."""
        return self.fc(self.body(self.prepare(video)))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, num_classes]``."""
        return self.head(F.silu(self.features(video)))


def _augment(video: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mild corruptions (noise, contrast, blur) so generated clips do not look out of distribution."""
    b = video.shape[0]
    sigma = torch.rand(b, 1, 1, 1, 1, generator=generator) * 0.08
    gain = 1.0 + (torch.rand(b, 1, 1, 1, 1, generator=generator) - 0.5) * 0.3
    x = video * gain + sigma * torch.randn(video.shape, generator=generator)
    blur = torch.rand(b, generator=generator) < 0.3
    if blur.any():
        k = torch.tensor([0.25, 0.5, 0.25])
        k2 = (k[:, None] * k[None, :]).expand(3, 1, 3, 3)
        sel = x[blur]
        n, f, c, h, w = sel.shape
        sm = F.conv2d(F.pad(sel.reshape(n * f, c, h, w), (1, 1, 1, 1), mode="replicate"), k2, groups=3)
        x = x.clone()
        x[blur] = sm.reshape(n, f, c, h, w)
    return x.clamp(-1.0, 1.0)


@torch.no_grad()
def _predict(model: MotionClassifier, video: torch.Tensor, batch: int, features: bool) -> torch.Tensor:
    model.eval()
    fn = model.features if features else model.forward
    return torch.cat([fn(video[i:i + batch]) for i in range(0, video.shape[0], batch)])


def extract_features(model: MotionClassifier, video: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Classifier features of a set of clips, ``[N, 64]``."""
    return _predict(model, video, batch, True)


def classifier_accuracy(model: MotionClassifier, video: torch.Tensor, labels: torch.Tensor,
                        batch: int = 64) -> float:
    """Share of clips whose predicted motion is ``labels``."""
    pred = _predict(model, video, batch, False).argmax(1)
    return float((pred == labels.to(pred.device)).float().mean())


def train_motion_classifier(dataset, steps: int = 1500, batch: int = 32,
                            generator: Optional[torch.Generator] = None, *, lr: float = 2e-3,
                            weight_decay: float = 1e-4, augment: bool = True,
                            log: Optional[Callable[[str], None]] = None, log_every: int = 100,
                            eval_set: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                            init_seed: int = 0) -> MotionClassifier:
    """Train a :class:`MotionClassifier` on ground-truth clips drawn with ``dataset.sample_batch``.

    AdamW with a one-cycle cosine learning rate; ``eval_set = (video, labels)`` is scored every
    ``log_every`` steps when ``log`` is given. Returns the network in eval mode.
    """
    if steps < 1 or batch < 2:
        raise ConfigError(f"classifier training needs steps >= 1 and batch >= 2, got steps={steps}, batch={batch}.")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    names = getattr(dataset, "motions", None)
    if names is None:
        from ..labels import CAMERA_MOTIONS as names
    with torch.random.fork_rng(devices=[]):  # seeded layer initialisation, global state untouched
        torch.manual_seed(init_seed)
        model = MotionClassifier(len(names))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    t0 = time.time()
    smooth = None
    for step in range(1, steps + 1):
        model.train()
        video, labels = dataset.sample_batch(batch, generator)
        if augment:
            video = _augment(video, generator)
        loss = F.cross_entropy(model(video), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        smooth = loss.item() if smooth is None else 0.95 * smooth + 0.05 * loss.item()
        if log is not None and (step % log_every == 0 or step == steps):
            msg = f"classifier step {step}/{steps} loss {smooth:.3f} ({time.time() - t0:.0f} s)"
            if eval_set is not None:
                msg += f" held-out accuracy {classifier_accuracy(model, *eval_set):.3f}"
            log(msg)
    return model.eval()


def save_classifier(model: MotionClassifier, path, metadata: Optional[dict] = None) -> None:
    """Write the classifier as safetensors; its config and ``metadata`` go into the header."""
    from safetensors.torch import save_file

    meta = {"motion_classifier.config": json.dumps(model.config())}
    meta.update({f"motion_classifier.{k}": str(v) for k, v in (metadata or {}).items()})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)


def load_classifier(path) -> tuple[MotionClassifier, dict[str, str]]:
    """Read a classifier written by :func:`save_classifier`: ``(model in eval mode, metadata)``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if "motion_classifier.config" not in meta:
        raise ConfigError(f"{path} is not a motion classifier written by framebridge_core.evaluation.metrics.")
    cfg = json.loads(meta["motion_classifier.config"])
    model = MotionClassifier(cfg["num_classes"], cfg["width"], cfg["feature_dim"])
    model.load_state_dict(load_file(str(path)))
    return model.eval(), {k.split(".", 1)[1]: v for k, v in meta.items()}
