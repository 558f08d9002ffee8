"""Bridge schedule against docs/math.md §1 and §8.1-8.4, §8.10."""

import math

import numpy as np
import pytest
import torch

from framebridge_core.bridge.schedule import BridgeSchedule
from framebridge_core.errors import ConfigError

S = BridgeSchedule()

# docs/math.md §1.4: i, t, σ, σ̄, a, b, c, ρ, n (as printed there)
REFERENCE = [
    (0, 0.000999, 0.005911, 5.000496, 0.9999986, 1.397e-6, 5.9106e-3, 169.19, 1.000016),
    (1, 0.001998, 0.010944, 5.000488, 0.9999952, 4.789e-6, 1.0943e-2, 91.378, 1.000055),
    (19, 0.019980, 0.100885, 4.999482, 0.999593, 4.0703e-4, 0.100865, 9.9102, 1.004669),
    (99, 0.099900, 0.500450, 4.975394, 0.989984, 0.0100160, 0.497937, 1.98817, 1.108156),
    (199, 0.199800, 0.999901, 4.899510, 0.960016, 0.0399841, 0.979707, 0.979901, 1.371662),
    (499, 0.499500, 2.498253, 4.331713, 0.750399, 0.249601, 2.164126, 0.346745, 2.290533),
    (799, 0.799201, 3.996604, 3.005354, 0.361214, 0.638786, 2.402002, 0.150380, 2.429010),
    (979, 0.979021, 4.895615, 1.018798, 0.0415097, 0.958490, 0.997429, 0.0416167, 0.998293),
    (999, 0.999001, 4.995505, 0.223439, 0.0019966, 0.998003, 0.223216, 0.0089447, 0.223225),
]


def _digits_tol(value: float) -> float:
    """Half a unit in the last printed significant digit, relative (tables give 5-7 digits)."""
    return 6e-4 * abs(value)


def test_sigma_1():
    assert S.sigma_1 == pytest.approx(5.000499975, abs=1e-9)
    assert S.sigma_1**2 == pytest.approx(25.005, abs=1e-12)


@pytest.mark.parametrize("row", REFERENCE, ids=lambda r: f"i={r[0]}")
def test_reference_table(row):
    i, t, sigma, sigma_bar, a, b, c, rho, n = row
    got = [S.t[i], S.sigma[i], S.sigma_bar[i], S.a[i], S.b[i], S.c[i], S.rho[i], S.norm[i]]
    for name, g, want in zip(("t", "sigma", "sigma_bar", "a", "b", "c", "rho", "n"), got, (t, sigma, sigma_bar, a, b, c, rho, n)):
        assert float(g) == pytest.approx(want, rel=1e-4, abs=_digits_tol(want)), (name, i)


def test_spot_values_spec_8_1():
    assert float(S.a[0]) == pytest.approx(0.9999986, abs=1e-7)
    assert float(S.c[0]) == pytest.approx(5.9106e-3, rel=1e-4)
    assert float(S.a[999]) == pytest.approx(0.0019966, rel=1e-4)
    assert float(S.b[999]) == pytest.approx(0.998003, abs=1e-6)
    assert float(S.c[999]) == pytest.approx(0.223216, abs=1e-6)
    assert float(S.rho[0]) == pytest.approx(169.19, abs=0.01)
    assert float(S.rho[999]) == pytest.approx(0.0089447, rel=1e-4)


def test_time_grid_is_i_plus_one_over_T_plus_one():
    assert S.t.dtype == torch.float64 and S.t.shape == (1000,)
    assert torch.equal(S.t, (torch.arange(1000, dtype=torch.float64) + 1) / 1001)
    assert float(S.t[999]) < 1.0 and float(S.t[0]) > 0.0


def test_identities():
    assert torch.allclose(S.a + S.b, torch.ones_like(S.a), atol=1e-12, rtol=0)
    assert torch.allclose(S.c**2, S.sigma_1**2 * S.a * S.b, atol=1e-12, rtol=1e-12)
    assert torch.allclose(S.rho, S.sigma_bar / (S.sigma_1 * S.sigma), rtol=1e-12, atol=0)
    assert torch.all(S.rho[1:] < S.rho[:-1])
    assert torch.allclose(S.sigma**2 + S.sigma_bar**2, torch.full_like(S.sigma, S.sigma_1**2), rtol=1e-14, atol=0)
    # total variance n² = a² + c² peaks at 6.5117 at t = 0.6923 (i = 692). The value "about 5.9
    # around t ≈ 0.7" is n² at i = 799 (n = 2.429), not the peak: see docs/notes/spec-deviations.md
    k = int(torch.argmax(S.norm**2))
    assert k == 692
    assert float(S.norm[k] ** 2) == pytest.approx(6.511663, abs=1e-6)
    assert float(S.norm[799] ** 2) == pytest.approx(5.900090, abs=1e-6)


def test_continuous_evaluation_matches_table_and_endpoints():
    c = S.at(S.t[[0, 500, 999]])
    assert torch.allclose(c.a, S.a[[0, 500, 999]], rtol=1e-15, atol=0)
    zero, one = S.at(0.0), S.at(1.0)
    assert (float(zero.a), float(zero.b), float(zero.c)) == (1.0, 0.0, 0.0)
    assert float(one.a) == pytest.approx(0.0, abs=1e-15)
    assert float(one.b) == pytest.approx(1.0, abs=1e-15)
    assert float(one.c) == pytest.approx(0.0, abs=1e-7)
    near0, near1 = S.at(1e-8), S.at(1 - 1e-8)
    assert float(near0.c) < 1e-4 and float(near0.a) > 1 - 1e-8
    assert float(near1.c) < 1e-3 and float(near1.b) > 1 - 1e-6
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        S.at(1.5)


def test_marginal_sampler_statistics():
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    x0, y = 0.3, -1.0
    for i in (0, 99, 499, 999):
        eps = torch.randn(n, generator=gen, dtype=torch.float64)
        xt = S.add_noise(torch.full((n,), x0, dtype=torch.float64), torch.full((n,), y, dtype=torch.float64), i, eps)
        mean, std = float(xt.mean()), float(xt.std())
        assert mean == pytest.approx(float(S.a[i] * x0 + S.b[i] * y), abs=4 * float(S.c[i]) / math.sqrt(n))
        assert std == pytest.approx(float(S.c[i]), rel=0.01)
    # at i = 0 the marginal is almost a point mass at x0: std c_0 ≈ 5.9e-3
    eps = torch.randn(n, generator=gen, dtype=torch.float64)
    xt = S.add_noise(torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64), 0, eps)
    assert float((xt - 0.0).std()) == pytest.approx(5.9106e-3, rel=0.01)


def test_add_noise_with_a_batch_of_indices():
    x0 = torch.randn(3, 2, 4)
    y = torch.randn(3, 2, 4)
    eps = torch.randn(3, 2, 4)
    idx = torch.tensor([0, 500, 999])
    got = S.add_noise(x0, y, idx, eps)
    for k, i in enumerate(idx.tolist()):
        want = float(S.a[i]) * x0[k] + float(S.b[i]) * y[k] + float(S.c[i]) * eps[k]
        assert torch.allclose(got[k], want, atol=1e-6)
    with pytest.raises(ConfigError, match=r"0\.\.999"):
        S.add_noise(x0, y, 1000, eps)


# -- time grids (docs/math.md §3.1, §8.10) -------------------------------------------------------


def test_trailing_50():
    assert S.timesteps(50, "trailing") == list(range(999, 0, -20))
    assert S.timesteps(50)[-1] == 19 and len(S.timesteps(50)) == 50


@pytest.mark.parametrize("n", [1, 3, 7, 10, 25, 30, 49, 50, 97, 100, 250, 333, 999, 1000])
def test_trailing_matches_the_diffusers_formula(n):
    want = (np.round(np.arange(1000, 0, -1000 / n)).astype(np.int64) - 1).tolist()
    assert S.timesteps(n, "trailing") == want


def test_trailing_1000_is_every_index():
    assert S.timesteps(1000, "trailing") == list(range(999, -1, -1))


def test_uniform_is_the_videocrafter_default():
    grid = S.timesteps(50, "uniform")
    assert grid[:3] == [981, 961, 941] and grid[-1] == 1 and len(grid) == 50
    with pytest.raises(ConfigError, match="past the last index 999"):
        S.timesteps(300, "uniform")  # stride 3 divides 999: official code indexes 1000


def test_iddpm_respacing():
    g250 = S.timesteps(250, "iddpm")
    assert len(g250) == 250 and g250[0] == 999 and g250[-1] == 0
    strides = np.diff(sorted(g250))
    assert set(strides.tolist()) <= {4, 5}
    assert np.mean(strides) == pytest.approx(999 / 249, abs=1e-9)  # ≈ 4.012
    assert S.timesteps(1000, "iddpm") == list(range(999, -1, -1))
    assert S.timesteps(2, "iddpm") == [999, 0]
    # round-half-even on the accumulated stride, as IDDPM's space_timesteps
    cur, want = 0.0, []
    for _ in range(8):
        want.append(round(cur))
        cur += 999 / 7
    assert S.timesteps(8, "iddpm") == sorted(want, reverse=True)


def test_bad_grid_arguments():
    with pytest.raises(ConfigError, match="unknown spacing 'linear'"):
        S.timesteps(10, "linear")
    with pytest.raises(ConfigError, match=r"1\.\.1000, got 0"):
        S.timesteps(0)
    with pytest.raises(ConfigError, match="beta_min"):
        BridgeSchedule(beta_min=1.0, beta_max=0.5)


def test_custom_schedule():
    s = BridgeSchedule(beta_min=0.1, beta_max=20.0, num_steps=10)
    assert s.sigma_1 == pytest.approx(math.sqrt(10.05))
    assert torch.allclose(s.a + s.b, torch.ones(10, dtype=torch.float64))
    assert s.timesteps(5) == [9, 7, 5, 3, 1]


def test_nearest_index_inverts_the_sigma_table():
    idx = torch.tensor([0, 1, 19, 500, 998, 999])
    assert torch.equal(S.nearest_index(S.sigma[idx].float()), idx)
    assert torch.equal(S.nearest_index(S.sigma.float()), torch.arange(1000))
    assert int(S.nearest_index(torch.tensor(1e9))) == 999 and int(S.nearest_index(torch.tensor(0.0))) == 0
