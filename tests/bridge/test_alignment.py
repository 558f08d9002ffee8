"""SAF alignment and parameterisations against docs/math.md §1.5, §2 and §8.5-8.9, §8.14, §8.16."""

import pytest
import torch

from framebridge_core.bridge.alignment import (
    aligned_input,
    output_to_x0,
    snr_aligned_timesteps,
    sqrt_snr_interp,
    training_target,
    v_to_eps_psi_loss_weight,
    x0_to_output,
)
from framebridge_core.vp import cogvideox_alphas_cumprod, diffusion_sqrt_snr, scaled_linear_alphas_cumprod
from framebridge_core.bridge.schedule import BridgeSchedule
from framebridge_core.errors import ConfigError

S = BridgeSchedule()
SD = scaled_linear_alphas_cumprod()
COG = cogvideox_alphas_cumprod()
D_SD = diffusion_sqrt_snr(SD)
D_COG = diffusion_sqrt_snr(COG)
T_SD = snr_aligned_timesteps(S, SD)
T_COG = snr_aligned_timesteps(S, COG)

TABLE_I = [0, 1, 2, 5, 10, 19, 39, 99, 199, 499, 799, 979, 999]
SD_TABLE = [0.1913, 0.6253, 0.7853, 0.9548, 2.694, 10.588, 40.691, 170.611, 359.994, 662.914, 855.430, 999.392, 999.869]
COG_TABLE = [0.1130, 0.5573, 0.7211, 0.8945, 0.9769, 2.8634, 13.587, 73.746, 199.245, 482.080, 682.718, 872.645, 965.716]

# docs/math.md §2.3: t̃ at the 50 trailing indices [999, 979, ..., 19], in sampling order
VC_TRAILING_50 = [
    999.869, 999.392, 999.137, 987.804, 960.819, 938.348, 918.750, 901.125, 884.923, 869.776,
    855.430, 841.694, 828.426, 815.509, 802.851, 790.374, 778.009, 765.696, 753.379, 741.008,
    728.534, 715.907, 703.081, 690.008, 676.636, 662.914, 648.786, 634.191, 619.065, 603.337,
    586.927, 569.749, 551.706, 532.689, 512.575, 491.228, 468.494, 444.201, 418.160, 390.164,
    359.994, 327.430, 292.270, 254.372, 213.729, 170.611, 125.837, 81.275, 40.691, 10.588,
]
COG_TRAILING_50 = [
    965.716, 872.645, 833.587, 805.295, 782.157, 762.079, 744.020, 727.382, 711.781, 696.956,
    682.718, 668.924, 655.463, 642.244, 629.193, 616.245, 603.345, 590.443, 577.492, 564.450,
    551.276, 537.931, 524.378, 510.577, 496.491, 482.080, 467.306, 452.129, 436.506, 420.397,
    403.757, 386.542, 368.707, 350.207, 331.000, 311.046, 290.309, 268.763, 246.393, 223.208,
    199.245, 174.589, 149.387, 123.888, 98.480, 73.746, 50.532, 29.990, 13.587, 2.863,
]


def _tol(value):
    return 1e-3 if value < 100 else 1.5e-3


# -- diffusion tables -----------------------------------------------------------------------


def test_sd_scaled_linear_table():
    assert float(D_SD[0]) == pytest.approx(34.2851, abs=1e-4)
    assert float(D_SD[1]) == pytest.approx(24.2046, abs=1e-4)
    assert float(D_SD[999]) == pytest.approx(0.068425, abs=1e-6)


def test_cogvideox_table_has_zero_terminal_snr():
    assert float(COG[999]) == 0.0
    assert float(D_COG[999]) == 0.0
    assert float(D_COG[0]) == pytest.approx(19.7945, abs=1e-4)
    assert float(D_COG[1]) == pytest.approx(13.8322, abs=1e-4)
    # the rescale keeps ᾱ_0 of the shifted schedule
    ac = scaled_linear_alphas_cumprod()
    shifted = ac / (3 + (1 - 3) * ac)
    assert float(COG[0]) == pytest.approx(float(shifted[0]), rel=1e-14)


# -- SD (VideoCrafter) alignment -------------------------------------------------------------


@pytest.mark.parametrize("i,want", list(zip(TABLE_I, SD_TABLE)))
def test_sd_alignment_table(i, want):
    assert float(T_SD[i]) == pytest.approx(want, abs=_tol(want))


def test_sd_alignment_regions():
    assert torch.all(T_SD[1:] > T_SD[:-1])
    top = torch.nonzero(S.rho > D_SD[1]).flatten().tolist()
    assert top == list(range(0, 8))
    extrap = torch.nonzero(S.rho < D_SD[-1]).flatten().tolist()
    assert extrap == list(range(947, 1000))
    assert torch.all((T_SD[947:] > 999) & (T_SD[947:] < 1000))
    assert float(T_SD[946]) <= 999
    # the d_0 + ρ_0 anchor: t̃_0 = d_0/(d_0 + ρ_0 − d_1), never 0
    d0, d1, r0 = float(D_SD[0]), float(D_SD[1]), float(S.rho[0])
    assert float(T_SD[0]) == pytest.approx(d0 / (d0 + r0 - d1), rel=1e-12)


def test_sd_alignment_interior_is_exact_inverse_interpolation():
    interior = slice(8, 947)
    back = sqrt_snr_interp(D_SD, T_SD[interior])
    rel = ((back - S.rho[interior]) / S.rho[interior]).abs().max()
    assert float(rel) < 1e-12


def test_top_region_joins_continuously():
    """The official top region (ρ > d_1, mapped from [d_1, d_0+ρ_0] onto [1, 0]) meets the table at
    t̃ = 1 from above, where the interpolated region below starts."""
    from framebridge_core.bridge.alignment import _official_alignment

    d1 = D_SD[1].item()
    rho = torch.tensor([S.rho[0].item(), d1 * (1 + 1e-9), d1, d1 * (1 - 1e-9)], dtype=torch.float64)
    t = _official_alignment(rho, D_SD.double())
    assert t[1].item() == pytest.approx(1.0, abs=1e-6)        # top region, just above d_1
    assert t[2].item() == pytest.approx(1.0, abs=1e-12)       # the table at d_1
    assert t[3].item() == pytest.approx(1.0, abs=1e-6)        # just below: the interpolated region
    assert 0.0 < t[0].item() < 1.0                             # ρ_0 itself lies inside the top region
    assert bool(torch.all(t[1:] >= t[:-1]))


def test_vc_trailing_50_list():
    got = [float(T_SD[i]) for i in S.timesteps(50, "trailing")]
    for g, w in zip(got, VC_TRAILING_50):
        assert g == pytest.approx(w, abs=_tol(w))


# -- CogVideoX alignment ---------------------------------------------------------------------


@pytest.mark.parametrize("i,want", list(zip(TABLE_I, COG_TABLE)))
def test_cog_alignment_table(i, want):
    assert float(T_COG[i]) == pytest.approx(want, abs=_tol(want))


def test_cog_alignment_regions():
    assert torch.all(T_COG[1:] > T_COG[:-1])
    assert float(T_COG[13]) < 1.0 <= float(T_COG[14])
    assert torch.nonzero(S.rho > D_COG[1]).flatten().tolist() == list(range(0, 14))
    # d_999 = 0: the extrapolation branch can never fire
    assert not torch.any(S.rho < D_COG[-1])
    assert float(T_COG.max()) < 999


def test_cog_trailing_50_list():
    got = [float(T_COG[i]) for i in S.timesteps(50, "trailing")]
    for g, w in zip(got, COG_TRAILING_50):
        assert g == pytest.approx(w, abs=_tol(w))


def test_float32_emulation_stays_close_to_float64():
    t32 = snr_aligned_timesteps(S, SD, precision=torch.float32)
    assert float((t32 - T_SD).abs().max()) < 2e-4
    # float32 rounding is visible: not bit-identical
    assert not torch.equal(t32, T_SD)


def test_exact_mode():
    te = snr_aligned_timesteps(S, SD, mode="exact")
    assert torch.all(te[1:] >= te[:-1])
    assert float(te.min()) == 0.0 and float(te.max()) == 999.0
    above_table = S.rho >= D_SD[0]
    assert torch.all(te[above_table] == 0)
    interior = slice(8, 947)
    assert torch.allclose(te[interior], T_SD[interior], rtol=0, atol=1e-9)
    # where both are defined the exact map is a true √SNR match, including the top region
    back = sqrt_snr_interp(D_SD, te[~above_table & (S.rho >= D_SD[-1])])
    want = S.rho[~above_table & (S.rho >= D_SD[-1])]
    assert float(((back - want) / want).abs().max()) < 1e-12


def test_alignment_errors():
    with pytest.raises(ConfigError, match="unknown alignment mode 'fancy'"):
        snr_aligned_timesteps(S, SD, mode="fancy")
    with pytest.raises(ConfigError, match="non-increasing"):
        snr_aligned_timesteps(S, SD.flip(0))


# -- aligned input (docs/math.md §2.1, §8.5) -------------------------------------------------


def test_aligned_input_is_unit_variance_vp_state():
    gen = torch.Generator().manual_seed(1)
    n = 200_000
    for i in (5, 300, 700, 990):
        x0 = torch.randn(n, generator=gen, dtype=torch.float64)
        y = torch.randn(n, generator=gen, dtype=torch.float64)
        eps = torch.randn(n, generator=gen, dtype=torch.float64)
        xt = S.add_noise(x0, y, i, eps)
        z = aligned_input(xt, y, i, S)
        a_d, s_d = float(S.a[i] / S.norm[i]), float(S.c[i] / S.norm[i])
        assert a_d**2 + s_d**2 == pytest.approx(1.0, abs=1e-14)
        assert torch.allclose(z, a_d * x0 + s_d * eps, atol=1e-12)
        assert float(z.var()) == pytest.approx(1.0, abs=0.015)
        assert a_d / s_d == pytest.approx(float(S.rho[i]), rel=1e-12)


# -- parameterisations (docs/math.md §1.5, §8.6, §8.16) --------------------------------------


def _sample(i, shape=(2, 3, 4, 5), seed=0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=gen, dtype=torch.float64)
    y = torch.randn(shape, generator=gen, dtype=torch.float64)
    eps = torch.randn(shape, generator=gen, dtype=torch.float64)
    return x0, y, eps, S.add_noise(x0, y, i, eps)


@pytest.mark.parametrize("param", ["v_aligned", "eps_psi", "eps_psi_new", "x0"])
@pytest.mark.parametrize("i", [0, 19, 499, 999])
def test_target_round_trip(param, i):
    x0, y, eps, xt = _sample(i)
    target = training_target(param, x0, y, eps, i, S)
    assert torch.allclose(output_to_x0(param, target, xt, y, i, S), x0, atol=1e-9)
    assert torch.allclose(x0_to_output(param, x0, xt, y, i, S), target, atol=1e-7 if param == "eps_psi_new" else 1e-9)


def test_round_trip_with_batched_indices():
    idx = torch.tensor([3, 640])
    x0, y, eps, xt = _sample(idx)
    for param in ("v_aligned", "eps_psi", "eps_psi_new"):
        target = training_target(param, x0, y, eps, idx, S)
        assert torch.allclose(output_to_x0(param, target, xt, y, idx, S), x0, atol=1e-9)


def test_v_target_is_the_pretrained_v_parameterisation():
    i = 321
    x0, y, eps, xt = _sample(i)
    a_d, s_d = float(S.a[i] / S.norm[i]), float(S.c[i] / S.norm[i])
    v = training_target("v_aligned", x0, y, eps, i, S)
    assert torch.allclose(v, a_d * eps - s_d * x0, atol=1e-12)
    # official from_v_to_x0 written with its explicit coefficients (COG bridge_scheduler.py:94-107)
    a, b, c = float(S.a[i]), float(S.b[i]), float(S.c[i])
    n = (a**2 + c**2) ** 0.5
    rho = a / c
    official = (rho / n * xt - rho * b / n * y - v) / (n / c)
    assert torch.allclose(output_to_x0("v_aligned", v, xt, y, i, S), official, atol=1e-12)
    assert torch.allclose(official, x0, atol=1e-9)


def test_eps_psi_decomposition():
    i = 700
    x0, y, eps, xt = _sample(i)
    eps_psi = training_target("eps_psi", x0, y, eps, i, S)
    sigma, sigma_bar, s1 = float(S.sigma[i]), float(S.sigma_bar[i]), S.sigma_1
    assert torch.allclose(eps_psi, sigma / s1**2 * (y - x0) + sigma_bar / s1 * eps, atol=1e-12)
    # ε_ψ → ε as t → 0 and → (y − x0)/σ_1 as t → 1: the coefficients of the decomposition
    assert float(S.sigma[0]) / s1**2 < 3e-4 and float(S.sigma_bar[0]) / s1 == pytest.approx(1.0, abs=1e-6)
    assert float(S.sigma[999]) / s1**2 == pytest.approx(1 / s1, rel=1e-3)
    assert float(S.sigma_bar[999]) / s1 == pytest.approx(0.0447, abs=1e-4)


def test_loss_plumbing_and_v_to_eps_psi_weight():
    w = v_to_eps_psi_loss_weight(S)
    for i in (10, 400, 950):
        x0, y, eps, xt = _sample(i, seed=i)
        v = training_target("v_aligned", x0, y, eps, i, S)
        e = training_target("eps_psi", x0, y, eps, i, S)
        assert float(((v - v) ** 2).mean()) == 0.0  # an oracle network has zero loss
        # perturb the predicted x0 and compare both errors
        dx0 = 0.01 * torch.randn_like(x0)
        v_err = x0_to_output("v_aligned", x0 + dx0, xt, y, i, S) - v
        e_err = x0_to_output("eps_psi", x0 + dx0, xt, y, i, S) - e
        assert float((e_err**2).mean()) == pytest.approx(float(w[i]) * float((v_err**2).mean()), rel=1e-9)
    assert torch.allclose(w, S.c**2 / (S.sigma**2 * (S.a**2 + S.c**2)), rtol=1e-15)


def test_unknown_parameterization():
    x0, y, eps, xt = _sample(5)
    with pytest.raises(ConfigError, match="unknown parameterization 'eps'.*v_aligned, eps_psi"):
        output_to_x0("eps", x0, xt, y, 5, S)
