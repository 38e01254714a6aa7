"""The teacher's jump Psi: DDIM is first order, leapfrog2 second order, leapfrog(h=1/2) is DDIM.

Ground truth comes from data distributions whose noise predictor is known exactly.

Gaussian data x0 ~ N(mu, s^2 I): with x_t = sqrt(a) x0 + sqrt(1 - a) n the marginal is
N(sqrt(a) mu, (a s^2 + 1 - a) I), the exact noise prediction is
eps(x, t) = E[n | x_t] = sqrt(1 - a) (x - sqrt(a) mu) / (a s^2 + 1 - a), and the PF-ODE carries the
standardised value z = (x - sqrt(a) mu) / sqrt(a s^2 + 1 - a) unchanged (in the DDIM variables
y = x / sqrt(a), sigma^2 = (1 - a) / a: dy/dsigma = sigma (y - mu) / (s^2 + sigma^2), solved by
y - mu = C sqrt(s^2 + sigma^2)). So the exact Psi is x_s = sqrt(a_s) mu + sqrt(a_s s^2 + 1 - a_s) z.

Gaussian mixtures have an exact eps too (a posterior-weighted sum over components) but no
closed-form flow; there the reference is scipy's DOP853 at tolerance 1e-12 in sigma.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from ops.distill.solvers import SOLVERS, alpha_at, ddim, get_solver, leapfrog, leapfrog2, sigma_to_t

T = 1000


@pytest.fixture(scope="module")
def alphas_cumprod() -> torch.Tensor:
    """Stable Diffusion's scaled_linear schedule, beta 0.00085..0.012 over 1000 steps, float64."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, T, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


MU = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
SD = torch.tensor([0.3, 0.5, 1.5], dtype=torch.float64)


def gaussian_model(ac: torch.Tensor):
    """model(x, t) -> (x0_hat, eps_hat), exact for x0 ~ N(MU, diag(SD^2))."""

    def model(x, t):
        a = alpha_at(ac, t).reshape(-1, 1)
        eps = (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * SD**2 + 1 - a)
        return (x - (1 - a).sqrt() * eps) / a.sqrt(), eps

    return model


def gaussian_flow(ac, x, t, s):
    """The exact PF-ODE solution from (x, t) to time s for the Gaussian data."""
    a_t = alpha_at(ac, t).reshape(-1, 1)
    a_s = alpha_at(ac, s).reshape(-1, 1)
    z = (x - a_t.sqrt() * MU) / (a_t * SD**2 + 1 - a_t).sqrt()
    return a_s.sqrt() * MU + (a_s * SD**2 + 1 - a_s).sqrt() * z


def integrate(solver, x, times, model, ac):
    for t, s in zip(times[:-1], times[1:], strict=True):
        tt = torch.full((x.shape[0],), t)
        ss = torch.full((x.shape[0],), s)
        x = solver(x, tt, ss, model, ac)
    return x


def slope(jumps, errors) -> float:
    return float(np.polyfit(np.log(jumps), np.log(errors), 1)[0])


def test_leapfrog_at_half_is_ddim(alphas_cumprod):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    t = torch.randint(20, T, (8,), generator=g)
    s = (t - 20).clamp(min=0)
    model = gaussian_model(alphas_cumprod)
    expected = ddim(x, t, s, model, alphas_cumprod)
    torch.testing.assert_close(
        leapfrog(x, t, s, model, alphas_cumprod, h=0.5), expected, rtol=0, atol=1e-15
    )
    torch.testing.assert_close(get_solver("leapfrog")(x, t, s, model, alphas_cumprod), expected)
    # Any other h leaves the trajectory: the noise component is scaled by 2h.
    off = leapfrog(x, t, s, model, alphas_cumprod, h=0.6)
    assert (off - expected).abs().max() > 1e-3


def test_schedule_interpolation_is_exact_on_grid_and_invertible(alphas_cumprod):
    t = torch.tensor([0, 1, 499, 999])
    torch.testing.assert_close(alpha_at(alphas_cumprod, t), alphas_cumprod[t])
    torch.testing.assert_close(alpha_at(alphas_cumprod, t.double()), alphas_cumprod[t])
    frac = torch.tensor([0.25, 10.5, 500.75, 998.9], dtype=torch.float64)
    a = alpha_at(alphas_cumprod, frac)
    torch.testing.assert_close(sigma_to_t(alphas_cumprod, ((1 - a) / a).sqrt()), frac)
    assert torch.all(a < alphas_cumprod[frac.floor().long()])
    assert torch.all(a > alphas_cumprod[frac.ceil().long()])


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_solvers_are_exact_for_a_point_mass(name, alphas_cumprod):
    """With data at one point x0, eps is constant along the flow and every consistent solver is
    exact (DDIM's defining property); leapfrog needs h = 1/2 for this."""
    x0 = torch.tensor([[0.7, -0.2, 1.1]], dtype=torch.float64)
    n = torch.tensor([[0.3, 1.2, -0.8]], dtype=torch.float64)
    t, s = torch.tensor([900]), torch.tensor([380])

    def model(x, tt):
        a = alpha_at(alphas_cumprod, tt).reshape(-1, 1)
        return x0, (x - a.sqrt() * x0) / (1 - a).sqrt()

    a_t, a_s = alphas_cumprod[t], alphas_cumprod[s]
    x = a_t.sqrt() * x0 + (1 - a_t).sqrt() * n
    out = get_solver(name)(x, t, s, model, alphas_cumprod)
    torch.testing.assert_close(out, a_s.sqrt() * x0 + (1 - a_s).sqrt() * n)


def test_orders_on_gaussian_data(alphas_cumprod):
    """Global error of the teacher's k-jumps over t = 960 -> 0 against the exact flow."""
    g = torch.Generator().manual_seed(0)
    t0 = 960
    a0 = alphas_cumprod[t0]
    x = a0.sqrt() * (MU + SD * torch.randn(64, 3, generator=g, dtype=torch.float64))
    x = x + (1 - a0).sqrt() * torch.randn(64, 3, generator=g, dtype=torch.float64)
    exact = gaussian_flow(alphas_cumprod, x, torch.tensor(t0), torch.tensor(0))
    model = gaussian_model(alphas_cumprod)
    jumps = [5, 10, 20, 40]
    errors = {name: [] for name in ("ddim", "leapfrog2")}
    for k in jumps:
        times = list(range(t0, -1, -k))
        for name in errors:
            out = integrate(SOLVERS[name], x, times, model, alphas_cumprod)
            errors[name].append((out - exact).abs().max().item())
    p_ddim, p_lf2 = slope(jumps, errors["ddim"]), slope(jumps, errors["leapfrog2"])
    print(f"gaussian: ddim slope {p_ddim:.3f}, leapfrog2 slope {p_lf2:.3f}, errors {errors}")
    assert 0.9 < p_ddim < 1.1
    # Second order at least. On Gaussian data the PF-ODE is linear with solution
    # y - mu ~ sqrt(s^2 + sigma^2), for which the midpoint rule's h^3 local term happens to
    # cancel: the observed slope is ~2.9. The mixture test below shows the generic order 2.
    assert p_lf2 > 1.9
    assert errors["leapfrog2"][0] < 1e-3 * errors["ddim"][0]


MIX_M = np.array([-1.0, 0.8])
MIX_S2 = np.array([0.2, 0.4]) ** 2
MIX_LOG_P = np.log([0.4, 0.6])


def mixture_eps(x: np.ndarray, a: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Exact (eps, x0) predictions for 1-d data from a two-component Gaussian mixture.

    Per component E[x0 | x_t] = m + sqrt(a) s^2 (x - sqrt(a) m) / var, var = a s^2 + 1 - a; the
    responsibilities are the components' posterior weights. (numpy: tiny torch reductions are
    slow on a shared 2-core machine.)
    """
    x_, a_ = x[:, None], np.broadcast_to(np.asarray(a, dtype=float), x.shape)[:, None]
    var = a_ * MIX_S2 + 1 - a_
    log_r = MIX_LOG_P - 0.5 * np.log(var) - 0.5 * (x_ - np.sqrt(a_) * MIX_M) ** 2 / var
    r = np.exp(log_r - log_r.max(-1, keepdims=True))
    x0_i = MIX_M + np.sqrt(a_) * MIX_S2 * (x_ - np.sqrt(a_) * MIX_M) / var
    x0 = (r * x0_i).sum(-1) / r.sum(-1)
    a_ = a_[:, 0]
    return (x - np.sqrt(a_) * x0) / np.sqrt(1 - a_), x0


def test_orders_on_gaussian_mixture_data(alphas_cumprod):
    """The generic case: first order for DDIM, second order for leapfrog2 (t = 600 -> 100)."""
    ac = alphas_cumprod
    t0, t1, batch = 600, 100, 16
    x = torch.linspace(-2.0, 2.0, batch, dtype=torch.float64)

    def model(xx, t):
        eps, x0 = mixture_eps(xx.numpy(), alpha_at(ac, t).numpy())
        return torch.from_numpy(x0), torch.from_numpy(eps)

    def rhs(sigma, y):  # dy/dsigma = eps(x, a) with x = sqrt(a) y, a = 1 / (1 + sigma^2)
        a = 1 / (1 + sigma**2)
        return mixture_eps(np.sqrt(a) * y, a)[0]

    sig = ((1 - ac[[t0, t1]]) / ac[[t0, t1]]).sqrt().tolist()
    y0 = (x / ac[t0].sqrt()).numpy()
    ref = solve_ivp(rhs, sig, y0, method="DOP853", rtol=1e-12, atol=1e-12).y[:, -1]
    exact = torch.from_numpy(ref) * ac[t1].sqrt()

    steps = [10, 20, 40, 80]
    jumps = [(t0 - t1) / n for n in steps]
    errors = {name: [] for name in ("ddim", "leapfrog2")}
    for n in steps:
        times = np.linspace(t0, t1, n + 1).tolist()  # fractional times: jumps of 6.25 .. 50
        for name in errors:
            out = integrate(SOLVERS[name], x, times, model, ac)
            errors[name].append((out - exact).abs().max().item())
    p_ddim, p_lf2 = slope(jumps, errors["ddim"]), slope(jumps, errors["leapfrog2"])
    print(f"mixture: ddim slope {p_ddim:.3f}, leapfrog2 slope {p_lf2:.3f}, errors {errors}")
    assert 0.9 < p_ddim < 1.1
    assert 1.8 < p_lf2 < 2.2


def test_leapfrog2_calls_the_model_at_the_sigma_midpoint(alphas_cumprod):
    calls = []

    def model(x, t):
        calls.append(torch.as_tensor(t, dtype=torch.float64))
        return torch.zeros_like(x), torch.zeros_like(x)

    x = torch.zeros(2, 4, 8, 8, dtype=torch.float64)
    leapfrog2(x, torch.tensor([999, 39]), torch.tensor([979, 19]), model, alphas_cumprod)
    assert len(calls) == 2
    torch.testing.assert_close(calls[0], torch.tensor([999.0, 39.0], dtype=torch.float64))
    sigma = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
    a_m = alpha_at(alphas_cumprod, calls[1])
    sigma_m = ((1 - a_m) / a_m).sqrt()
    torch.testing.assert_close(sigma_m, (sigma[[999, 39]] + sigma[[979, 19]]) / 2)
    assert torch.all((calls[1] > torch.tensor([979, 19])) & (calls[1] < torch.tensor([999, 39])))


def test_unknown_solver_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown solver 'rk4'"):
        get_solver("rk4")
