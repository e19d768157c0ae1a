"""The rectified-flow objective and its σ sampling, against hand-computed values and diffusers'
own training utilities (logit-normal density, the scheduler's shift, FluxPipeline's calculate_shift)."""

from __future__ import annotations

import math

import pytest
import torch

from krona_core.families.flow import FLUX_SIGMAS, SD3_SIGMAS, ResolutionShift, SigmaSampling, shift_sigmas
from krona_core.train.config import TrainConfig
from krona_core.train.objective import diffusion_loss, flow_sampling, noise_coefficients, prediction_from_denoised


def test_shift_by_hand():
    sigma = torch.tensor([0.0, 0.25, 0.5, 1.0])
    # s·σ / (1 + (s − 1)·σ) with s = 3: 0, 0.75/1.5, 1.5/2, 1
    assert torch.allclose(shift_sigmas(sigma, 3.0), torch.tensor([0.0, 0.5, 0.75, 1.0]))
    assert torch.equal(shift_sigmas(sigma, 1.0), sigma)


def test_flux_resolution_shift_by_hand():
    rule = ResolutionShift()
    assert rule.mu((32, 32)) == pytest.approx(0.5)  # 16 × 16 = 256 tokens: base_shift
    assert rule.mu((128, 128)) == pytest.approx(1.15)  # 64 × 64 = 4096 tokens: max_shift
    assert rule.mu((64, 64)) == pytest.approx(0.5 + 0.65 / 3840 * (1024 - 256))  # 1024 px: 0.63
    # kohya's time_shift(μ, 1, t) = e^μ / (e^μ + 1/t − 1) is the fixed shift with s = e^μ
    t = 0.3
    mu = rule.mu((64, 64))
    kohya = math.exp(mu) / (math.exp(mu) + (1 / t - 1))
    assert float(shift_sigmas(torch.tensor(t), math.exp(mu))) == pytest.approx(kohya, rel=1e-6)


def test_draws_match_hand_computed_logit_normal_and_shift():
    g = torch.Generator().manual_seed(5)
    got = SD3_SIGMAS.draw(6, g, (64, 64))
    n = torch.randn(6, generator=torch.Generator().manual_seed(5))
    u = 1 / (1 + torch.exp(-n))
    assert torch.allclose(got, 3 * u / (1 + 2 * u), atol=1e-7)
    flux = FLUX_SIGMAS.draw(6, torch.Generator().manual_seed(5), (64, 64))
    e = math.exp(0.5 + 0.65 / 3840 * 768)
    assert torch.allclose(flux, e / (e + 1 / u - 1), atol=1e-6)
    uniform = SigmaSampling(distribution="uniform").draw(4, torch.Generator().manual_seed(2), (8, 8))
    assert torch.equal(uniform, torch.rand(4, generator=torch.Generator().manual_seed(2)))


def test_matches_diffusers_training_utilities():
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift
    from diffusers.training_utils import compute_density_for_timestep_sampling

    u = compute_density_for_timestep_sampling("logit_normal", 8, logit_mean=0.0, logit_std=1.0,
                                              generator=torch.Generator().manual_seed(3))
    ours = SigmaSampling().draw(8, torch.Generator().manual_seed(3), (64, 64))
    assert torch.allclose(ours, u, atol=1e-7)
    plain = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0).sigmas
    shifted = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0).sigmas
    assert torch.allclose(shift_sigmas(plain, 3.0), shifted, atol=1e-6)
    for hw in ((32, 32), (64, 48), (128, 128)):
        tokens = (hw[0] // 2) * (hw[1] // 2)
        assert ResolutionShift().mu(hw) == pytest.approx(calculate_shift(tokens))


class Linear:
    """A flow denoiser whose velocity is a fixed multiple of its input; records what it was given."""

    prediction_type = "flow"
    alphas_cumprod = None
    sigma_sampling = SD3_SIGMAS
    device = torch.device("cpu")

    def __init__(self, k: float):
        self.k, self.seen = k, []

    def predict(self, x_t, t, cond):
        self.seen.append((x_t.clone(), t.clone()))
        return self.k * x_t


def test_flow_loss_by_hand():
    x0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    denoiser = Linear(0.5)
    loss = diffusion_loss(denoiser, x0, {}, torch.Generator().manual_seed(9), TrainConfig(steps=1))
    g = torch.Generator().manual_seed(9)  # the same draws, in the objective's order: ε, then σ
    eps = torch.randn(x0.shape, generator=g)
    sigma = SD3_SIGMAS.draw(3, g, (8, 8)).view(-1, 1, 1, 1)
    x_t = (1 - sigma) * x0 + sigma * eps
    expected = ((0.5 * x_t - (eps - x0)) ** 2).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    seen_x, seen_t = denoiser.seen[0]
    assert torch.allclose(seen_x, x_t) and torch.allclose(seen_t, sigma.flatten())


def test_config_overrides_and_refusals():
    denoiser = Linear(0.0)
    assert flow_sampling(denoiser, TrainConfig()) == SD3_SIGMAS
    fixed = flow_sampling(type("F", (Linear,), {"sigma_sampling": FLUX_SIGMAS})(0.0), TrainConfig(flow_shift=2.0))
    assert fixed.resolution_shift is None and fixed.shift == 2.0
    assert flow_sampling(denoiser, TrainConfig(timestep_sampling="uniform", logit_std=2.0)).distribution == "uniform"
    with pytest.raises(ValueError, match="min_snr_gamma"):
        diffusion_loss(denoiser, torch.zeros(1, 4, 8, 8), {}, torch.Generator(), TrainConfig(steps=1, min_snr_gamma=5.0))
    for bad in (dict(timestep_sampling="mode"), dict(flow_shift=0.0), dict(logit_std=-1.0)):
        with pytest.raises(ValueError):
            TrainConfig(steps=1, **bad).validate()


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "flow"])
def test_prediction_from_an_exact_denoised_is_the_target(kind):
    g = torch.Generator().manual_seed(4)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    if kind == "flow":
        level = torch.tensor([0.2, 0.9])
        a, s = noise_coefficients(kind, level, None)
        target = eps - x0
    else:
        ab = torch.linspace(0.99, 0.01, 1000)
        level = torch.tensor([10, 900])
        a, s = noise_coefficients(kind, level, ab)
        target = eps if kind == "epsilon" else a * eps - s * x0
    x_t = a * x0 + s * eps
    assert torch.allclose(prediction_from_denoised(kind, x_t, x0, a, s), target, atol=1e-5)


def test_flow_loss_on_video_latents_by_hand():
    """5-D latents (N, C, T, H, W) as Wan's: σ broadcasts per sample over channels, frames and pixels
    (a (N, 1, 1, 1) σ would pair the batch with the channels), noise offset per sample and channel."""
    x0 = torch.randn(2, 16, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    denoiser = Linear(0.5)
    config = TrainConfig(steps=1, noise_offset=0.1)
    loss = diffusion_loss(denoiser, x0, {}, torch.Generator().manual_seed(9), config)
    g = torch.Generator().manual_seed(9)  # ε, its offset, then σ
    eps = torch.randn(x0.shape, generator=g)
    eps = eps + 0.1 * torch.randn(2, 16, 1, 1, 1, generator=g)
    sigma = SD3_SIGMAS.draw(2, g, (4, 4))
    x_t = torch.stack([(1 - s) * x + s * e for x, e, s in zip(x0, eps, sigma)])
    expected = ((0.5 * x_t - (eps - x0)) ** 2).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert torch.allclose(denoiser.seen[0][0], x_t)
