"""Frames-as-batch adapter: the layout ComfyUI's SD-VAE families use, around the Latte network."""

import pytest
import torch

from framebridge_core.bridge.schedule import BridgeSchedule
from framebridge_core.errors import ConfigError, ShapeError
from framebridge_core.families.frames import PRIOR_KEY, fold_frames, unfold_frames
from framebridge_core.families.latte.frames import LatteBridgeFrames, LatteNeuralPriorFrames
from framebridge_core.families.latte.network import LatteConfig
from framebridge_core.bridge.sampling import cfg_denoiser, sample_bridge

T = 4


def tiny(in_channels=4, **kw):
    cfg = dict(input_size=4, patch_size=2, in_channels=in_channels, out_channels=4, hidden_size=32,
               depth=2, num_heads=2, num_frames=T, num_classes=5)
    cfg.update(kw)
    return LatteConfig(**cfg)


def randomized(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not name.endswith(("pos_embed", "temp_embed")):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def test_fold_and_unfold_are_inverse_and_keep_video_order():
    x = torch.arange(2 * T * 3).float().reshape(2 * T, 3, 1, 1)
    v = fold_frames(x, T)
    assert v.shape == (2, T, 3, 1, 1)
    assert torch.equal(v[1, 0], x[T])  # row b·T + f is frame f of video b
    assert torch.equal(unfold_frames(v), x)
    with pytest.raises(ShapeError, match=r"10 frames, which is not a whole number of 4-frame videos.*length=4"):
        fold_frames(torch.zeros(10, 3, 2, 2), T)
    with pytest.raises(ShapeError, match=r"frames-as-batch"):
        fold_frames(torch.zeros(1, 4, 3, 2, 2), T)


def test_adapter_accepts_the_config_as_keyword_fields():
    a = LatteBridgeFrames(**tiny().to_dict(), dtype=torch.float32)
    assert a.config == tiny() and a.dtype == torch.float32
    with pytest.raises(ConfigError, match="bridge network"):
        LatteBridgeFrames(tiny(condition_type=None, has_timestep=False))


def test_adapter_equals_the_direct_network_call():
    adapter = randomized(LatteBridgeFrames(tiny()))
    g = torch.Generator().manual_seed(1)
    B = 2
    x = torch.randn(B * T, 4, 4, 4, generator=g)
    image = torch.randn(B, 4, 4, 4, generator=g)
    cond_rows = image.repeat_interleave(T, 0)
    labels = torch.tensor([3, 1])
    t = torch.tensor([700.0, 700.0]).repeat_interleave(T)
    got = adapter(x, t, fb_cond_frame=cond_rows, fb_class=labels.repeat_interleave(T))
    want = adapter.net.eps_psi(fold_frames(x, T), torch.tensor([700.0, 700.0]), labels, image)
    assert torch.allclose(got, unfold_frames(want), atol=1e-6)
    # a cond/uncond batch (the host concatenates whole copies) splits back into the same answers
    both = adapter(torch.cat([x, x]), torch.cat([t, t]), fb_cond_frame=torch.cat([cond_rows, cond_rows]),
                   fb_class=torch.cat([labels.repeat_interleave(T), torch.full((B * T,), 5)]))
    assert torch.allclose(both[: B * T], got, atol=1e-6)
    null = adapter.net.eps_psi(fold_frames(x, T), torch.tensor([700.0, 700.0]), torch.tensor([5, 5]), image)
    assert torch.allclose(both[B * T:], unfold_frames(null), atol=1e-6)


def test_adapter_sampling_matches_the_core_latte_denoiser():
    """The host path (adapter + x̂0 = x − σF + CFG on x̂0) equals the core Latte CFG sampler."""
    adapter = randomized(LatteBridgeFrames(tiny()), seed=2)
    s = BridgeSchedule()
    g = torch.Generator().manual_seed(3)
    image = torch.randn(1, 4, 4, 4, generator=g)
    prior = image.repeat_interleave(T, 0)
    label, null, w = 2, 5, 7.0

    def host(label_value):
        def den(x, i, y):
            out = adapter(x, torch.full((x.shape[0],), float(i)), fb_cond_frame=prior,
                          fb_class=torch.full((x.shape[0],), label_value))
            return x - float(s.sigma[i]) * out
        return den

    def core(x, i, y):
        eps = adapter.net.eps_psi(fold_frames(x, T), torch.tensor([float(i)]), torch.tensor([label]), image,
                                  cfg_scale=w)
        return x - float(s.sigma[i]) * unfold_frames(eps)

    a = sample_bridge(cfg_denoiser(host(label), host(null), w), prior, s, 6, spacing="iddpm",
                      generator=torch.Generator().manual_seed(9))
    b = sample_bridge(core, prior, s, 6, spacing="iddpm", generator=torch.Generator().manual_seed(9))
    assert torch.allclose(a, b, atol=1e-5)


def test_neural_prior_pairing_errors():
    x = torch.zeros(T, 4, 4, 4)
    t = torch.full((T,), 10.0)
    four = randomized(LatteBridgeFrames(tiny()))
    eight = randomized(LatteBridgeFrames(tiny(in_channels=8)))
    with pytest.raises(ConfigError, match="does not take a neural prior.*remove that node"):
        four(x, t, fb_cond_frame=x, fb_neural_prior=True)
    with pytest.raises(ConfigError, match="trained with the neural prior.*'Neural Prior'"):
        eight(x, t, fb_cond_frame=x, fb_neural_prior=False)
    with pytest.raises(ConfigError, match="gave no prior"):
        eight(x, t, fb_cond_frame=x, fb_neural_prior=True)
    out = eight(x, t, fb_cond_frame=x, fb_neural_prior=True, transformer_options={PRIOR_KEY: x + 1})
    assert out.shape == (T, 4, 4, 4) and torch.isfinite(out).all()
    with pytest.raises(ConfigError, match="Bridge Prior from Image"):
        four(x, t)
    with pytest.raises(ConfigError, match=r"class index 34 is out of range.*5 classes \(0\.\.4, or 5 for unconditional\)"):
        four(x, t, fb_cond_frame=x, fb_class=torch.full((T,), 34))


def test_neural_prior_frames_uses_the_first_frame_of_each_video():
    net = randomized(LatteNeuralPriorFrames(tiny(condition_type=None, has_timestep=False)), seed=4)
    g = torch.Generator().manual_seed(5)
    images = torch.randn(2, 4, 4, 4, generator=g)
    static = images.repeat_interleave(T, 0)
    coarse = net(static, torch.tensor([1, 4]))
    assert coarse.shape == (2 * T, 4, 4, 4)
    want = net.net(images, torch.tensor([1, 4]))
    assert torch.allclose(coarse, unfold_frames(want), atol=1e-6)
    # only frame 0 of each video matters (the official input is the first latent repeated)
    noisy = static.clone()
    noisy[1:T] += 5.0
    assert torch.allclose(net(noisy, torch.tensor([1, 4])), coarse, atol=1e-6)
