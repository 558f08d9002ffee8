"""Bridge samplers against docs/math.md §3.2-3.4 and §8.11-8.14."""

import math

import pytest
import torch

from framebridge_core.bridge.alignment import output_to_x0
from framebridge_core.bridge.schedule import BridgeSchedule
from framebridge_core.errors import ConfigError, ShapeError
from framebridge_core.bridge.sampling import bridge_step, cfg_combine, cfg_denoiser, sample_bridge

S = BridgeSchedule()
N = 400_000  # Monte-Carlo samples; tolerance about 3/√N on variances of order 1


def point_mass(m):
    return lambda x, i, y: torch.full_like(x, m)


def gaussian_oracle(mu, s2):
    """Posterior mean of x0 ~ N(mu, s2) given x_i, with y = mu."""

    def denoise(x, i, y):
        a, b, c = float(S.a[i]), float(S.b[i]), float(S.c[i])
        k = a * s2 / (a * a * s2 + c * c)
        return mu + k * (x - a * mu - b * y)

    return denoise


def oracle_final_variance(grid, method="sde", eta=0.5, s2=1.0):
    """Exact final variance of the linear-Gaussian recursion, independent of the sampler code."""
    eta = {"sde": 1.0, "ode": 0.0}.get(method, eta)
    v = 0.0
    for k, s in enumerate(grid):
        a_s, c_s = float(S.a[s]), float(S.c[s])
        k_s = a_s * s2 / (a_s * a_s * s2 + c_s * c_s)
        if k == len(grid) - 1:
            return k_s * k_s * v
        t = grid[k + 1]
        sig_s, sig_t = float(S.sigma[s]), float(S.sigma[t])
        A = sig_t**2 / sig_s**2
        post = sig_t**2 * (1 - A)
        e = 1.0 if k == 0 else eta
        a_t, c_t = float(S.a[t]), float(S.c[t])
        keep = math.sqrt(c_t**2 - e * e * post) / c_s
        coef = a_t * k_s + keep * (1 - a_s * k_s)  # u_t = coef·u_s + e·√post·ε  (u = x − μ)
        v = coef * coef * v + e * e * post


# -- one step, point-mass data (docs/math.md §8.11, §8.13) -----------------------------------------


@pytest.mark.parametrize("eta", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("s,t", [(999, 979), (500, 250), (40, 19), (19, 0)])
def test_one_step_from_an_exact_marginal_is_exact(eta, s, t):
    gen = torch.Generator().manual_seed(s + t)
    m, y = 0.3, -1.0
    yy = torch.full((N,), y, dtype=torch.float64)
    x_s = S.add_noise(torch.full((N,), m, dtype=torch.float64), yy, s, torch.randn(N, generator=gen, dtype=torch.float64))
    eps = torch.randn(N, generator=gen, dtype=torch.float64)
    x_t = bridge_step(x_s, torch.full_like(x_s, m), s, t, S, prior=yy, eta=eta, noise=eps)
    c_t = float(S.c[t])
    assert float(x_t.mean()) == pytest.approx(float(S.a[t]) * m + float(S.b[t]) * y, abs=4 * c_t / math.sqrt(N))
    assert float(x_t.var()) == pytest.approx(c_t**2, rel=3 * math.sqrt(2 / N))


def test_ode_step_keeps_the_noise_coordinate():
    m, y = 0.3, -1.0
    gen = torch.Generator().manual_seed(3)
    yy = torch.full((1000,), y, dtype=torch.float64)
    for s, t in [(999, 979), (600, 200), (40, 19)]:
        x_s = S.add_noise(torch.full_like(yy, m), yy, s, torch.randn(1000, generator=gen, dtype=torch.float64))
        x_t = bridge_step(x_s, torch.full_like(x_s, m), s, t, S, prior=yy, eta=0.0)
        lhs = x_t - float(S.a[t]) * m - float(S.b[t]) * y
        rhs = float(S.c[t] / S.c[s]) * (x_s - float(S.a[s]) * m - float(S.b[s]) * y)
        assert torch.allclose(lhs, rhs, atol=1e-12)


def test_ode_step_equals_the_spec_formula():
    """η = 0 is the docs/math.md §3.3 ODE written with σ, σ̄ (derived from the formula, not the Latte code)."""
    gen = torch.Generator().manual_seed(4)
    x_s, x0, y = (torch.randn(64, generator=gen, dtype=torch.float64) for _ in range(3))
    s, t = 730, 410
    sg_s, sg_t, sb_s, sb_t, s1 = (float(v) for v in (S.sigma[s], S.sigma[t], S.sigma_bar[s], S.sigma_bar[t], S.sigma_1))
    want = (sg_t * sb_t) / (sg_s * sb_s) * x_s + (1 / s1**2) * (
        (sb_t**2 - sb_s * sg_t * sb_t / sg_s) * x0 + (sg_t**2 - sg_s * sg_t * sb_t / sb_s) * y
    )
    assert torch.allclose(bridge_step(x_s, x0, s, t, S, prior=y, eta=0.0), want, atol=1e-12)


def test_sde_step_is_the_official_formula():
    gen = torch.Generator().manual_seed(5)
    x_s, x0, eps = (torch.randn(64, generator=gen) for _ in range(3))
    s, t = 979, 959
    # COG bridge_scheduler.py:139-156 with α ≡ 1, coefficients from float32 buffers
    sig_s, sig_t = S.sigma.float()[s], S.sigma.float()[t]
    official = (sig_t**2 / sig_s**2) * x_s + (1 - sig_t**2 / sig_s**2) * x0 + sig_t * torch.sqrt(1 - sig_t**2 / sig_s**2) * eps
    assert torch.allclose(bridge_step(x_s, x0, s, t, S, eta=1.0, noise=eps), official, atol=1e-6)


# -- whole samplers, point-mass data (docs/math.md §8.11) ------------------------------------------


def test_sde_from_the_prior_follows_the_pinned_bridge():
    m, y = 0.3, -1.0
    grid = S.timesteps(50, "trailing")
    states = {}

    def record(info):
        states[info["step"]] = info["x"].clone()

    prior = torch.full((N,), y, dtype=torch.float64)
    out = sample_bridge(point_mass(m), prior, S, 50, generator=torch.Generator().manual_seed(7), callback=record)
    assert torch.equal(out, torch.full_like(out, m))  # final x̂0 = m exactly
    s0 = float(S.sigma[999]) ** 2
    # after the first step (index 979): the bridge pinned at (t_999, y), not the exact marginal
    sig = float(S.sigma[979]) ** 2
    mean_979, var_979 = m + sig / s0 * (y - m), sig * (1 - sig / s0)
    assert mean_979 == pytest.approx(-0.948530, abs=1e-6)
    assert var_979 == pytest.approx(0.948907, abs=1e-6)
    assert float(S.a[979] * m + S.b[979] * y) == pytest.approx(-0.946037, abs=1e-6)
    assert float(S.c[979] ** 2) == pytest.approx(0.994865, abs=1e-6)
    assert float(states[0].mean()) == pytest.approx(mean_979, abs=4 * math.sqrt(var_979 / N))
    assert float(states[0].var()) == pytest.approx(var_979, rel=3 * math.sqrt(2 / N))
    # the state entering index 19 (after step 48)
    sig = float(S.sigma[19]) ** 2
    var_19 = sig * (1 - sig / s0)
    assert var_19 == pytest.approx(0.01017368, abs=1e-8)
    assert float(S.c[19] ** 2) == pytest.approx(0.01017369, abs=1e-8)
    assert float(states[grid.index(39)].var()) == pytest.approx(var_19, rel=3 * math.sqrt(2 / N))


# -- Gaussian oracle (docs/math.md §8.12, §8.13) ----------------------------------------------------


@pytest.mark.parametrize(
    "n,method,want",
    [(50, "sde", 0.831621), (250, "sde", 0.957045), (1000, "sde", 0.988366),
     (50, "ode", 0.875529), (250, "ode", 0.787463), (1000, "ode", 0.498550)],
)
def test_gaussian_oracle_recursion_values(n, method, want):
    assert oracle_final_variance(S.timesteps(n, "trailing"), method) == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("method,eta", [("sde", 1.0), ("ode", 0.0), ("mixed", 0.5)])
def test_gaussian_oracle_monte_carlo(method, eta):
    mu = 0.7
    prior = torch.full((N,), mu)
    out = sample_bridge(gaussian_oracle(mu, 1.0), prior, S, 50, method=method, eta=eta,
                        generator=torch.Generator().manual_seed(11))
    want = oracle_final_variance(S.timesteps(50), method, eta)
    assert out.dtype == torch.float32
    assert float(out.double().mean()) == pytest.approx(mu, abs=4 * math.sqrt(want / N))
    assert float(out.double().var()) == pytest.approx(want, abs=3 / math.sqrt(N))
    if method == "mixed":
        # not monotone in η: at 50 steps η = 0.5 under-disperses less than both end points
        assert want == pytest.approx(0.890792, abs=1e-6)
        assert want > oracle_final_variance(S.timesteps(50), "ode") > oracle_final_variance(S.timesteps(50), "sde")


def test_final_mean_is_exact_on_any_grid():
    mu = -0.25
    for steps, spacing in [(7, "trailing"), (13, "iddpm"), (25, "uniform")]:
        out = sample_bridge(gaussian_oracle(mu, 1.0), torch.full((4,), mu, dtype=torch.float64), S, steps,
                            spacing=spacing, noise=lambda k, like: torch.zeros_like(like))
        assert torch.allclose(out, torch.full_like(out, mu), atol=1e-12)


# -- determinism, noise plumbing, last step --------------------------------------------------------


def test_ode_is_deterministic_after_its_first_step():
    draws = []

    def noise(k, like):
        draws.append(k)
        return torch.ones_like(like)

    prior = torch.linspace(-1, 1, 16)
    a = sample_bridge(gaussian_oracle(0.0, 1.0), prior, S, 20, method="ode", noise=noise)
    b = sample_bridge(gaussian_oracle(0.0, 1.0), prior, S, 20, method="ode", noise=noise)
    assert draws == [0, 0]  # one stochastic step per run
    assert torch.equal(a, b)


def test_generator_reproducibility():
    prior = torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    den = gaussian_oracle(0.1, 0.5)
    a = sample_bridge(den, prior, S, 10, generator=torch.Generator().manual_seed(123))
    b = sample_bridge(den, prior, S, 10, generator=torch.Generator().manual_seed(123))
    c = sample_bridge(den, prior, S, 10, generator=torch.Generator().manual_seed(124))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # the generator's draws, not the global RNG, drive the noise
    torch.manual_seed(0)
    d = sample_bridge(den, prior, S, 10, generator=torch.Generator().manual_seed(123))
    torch.manual_seed(999)
    e = sample_bridge(den, prior, S, 10, generator=torch.Generator().manual_seed(123))
    assert torch.equal(d, e) and torch.equal(a, d)


def test_explicit_noise_matches_the_generator():
    prior = torch.randn(3, 5)
    gen = torch.Generator().manual_seed(42)
    pre = [torch.randn(prior.shape, generator=gen) for _ in range(9)]
    a = sample_bridge(gaussian_oracle(0.0, 1.0), prior, S, 10, noise=pre)
    b = sample_bridge(gaussian_oracle(0.0, 1.0), prior, S, 10, generator=torch.Generator().manual_seed(42))
    assert torch.equal(a, b)
    with pytest.raises(ShapeError, match=r"noise for step 0 has shape \(2,\), expected \(3, 5\)"):
        sample_bridge(gaussian_oracle(0.0, 1.0), prior, S, 10, noise=[torch.zeros(2)] * 9)


def test_start_at_prior_and_return_last_x0():
    seen = []

    def den(x, i, y):
        seen.append((i, x.clone()))
        return 0.5 * x + 0.1 * i

    prior = torch.randn(6)
    out = sample_bridge(den, prior, S, 5, generator=torch.Generator().manual_seed(0))
    assert [i for i, _ in seen] == [999, 799, 599, 399, 199]
    assert torch.equal(seen[0][1], prior)  # no noise added before the first call
    assert torch.allclose(out, 0.5 * seen[-1][1] + 0.1 * 199)


def test_half_precision_prior_keeps_a_float32_state():
    prior = torch.randn(8).half()
    dtypes = []

    def den(x, i, y):
        dtypes.append(x.dtype)
        return x

    out = sample_bridge(den, prior, S, 3, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and set(dtypes) == {torch.float32}


def test_explicit_grid_and_callback_cancel():
    calls = []

    class Cancelled(Exception):
        pass

    def cb(info):
        calls.append((info["step"], info["total"], info["index"]))
        if info["step"] == 1:
            raise Cancelled

    with pytest.raises(Cancelled):
        sample_bridge(point_mass(0.0), torch.zeros(4), S, [900, 500, 100], callback=cb,
                      generator=torch.Generator().manual_seed(0))
    assert calls == [(0, 3, 900), (1, 3, 500)]
    with pytest.raises(ConfigError, match="strictly descending"):
        sample_bridge(point_mass(0.0), torch.zeros(4), S, [100, 500])
    with pytest.raises(ConfigError, match="unknown bridge sampling method 'heun'"):
        sample_bridge(point_mass(0.0), torch.zeros(4), S, 5, method="heun")
    with pytest.raises(ConfigError, match=r"eta must lie in \[0, 1\], got 1.5"):
        sample_bridge(point_mass(0.0), torch.zeros(4), S, 5, method="mixed", eta=1.5)


# -- classifier-free guidance (docs/math.md §3.4, §8.14) -------------------------------------------


@pytest.mark.parametrize("param", ["v_aligned", "eps_psi"])
def test_cfg_on_output_equals_cfg_on_x0(param):
    gen = torch.Generator().manual_seed(9)
    x_t, y, f_c, f_u = (torch.randn(2, 4, 6, generator=gen, dtype=torch.float64) for _ in range(4))
    i = 555
    for w in (1.0, 3.5, 7.5):
        lhs = output_to_x0(param, cfg_combine(f_c, f_u, w), x_t, y, i, S)
        x0_c = output_to_x0(param, f_c, x_t, y, i, S)
        x0_u = output_to_x0(param, f_u, x_t, y, i, S)
        assert torch.allclose(lhs, cfg_combine(x0_c, x0_u, w), atol=1e-10)
    assert torch.equal(cfg_combine(f_c, f_u, 1.0), f_c)


def test_cfg_denoiser():
    uncond_calls = []

    def cond(x, i, y):
        return x + 1

    def uncond(x, i, y):
        uncond_calls.append(i)
        return x - 1

    x = torch.zeros(3)
    assert torch.equal(cfg_denoiser(cond, uncond, 1.0)(x, 5, x), x + 1)
    assert uncond_calls == []
    assert torch.equal(cfg_denoiser(cond, uncond, 7.0)(x, 5, x), torch.full((3,), 13.0))
    assert uncond_calls == [5]


def test_no_generator_never_touches_the_global_rng():
    """Without a generator the sde sampler draws fixed noise, not from (or advancing) torch's global RNG."""
    prior = torch.zeros(3, 4, dtype=torch.float64)
    before = torch.get_rng_state()
    a = sample_bridge(gaussian_oracle(0.0, 1.0), prior, S, 10)
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(7)  # move the global RNG on: the result must not change
    b = sample_bridge(gaussian_oracle(0.0, 1.0), prior, S, 10)
    torch.set_rng_state(before)
    assert torch.equal(a, b)
    assert a.abs().max() > 1e-3   # noise was drawn (the oracle alone would return the prior's mean 0)
