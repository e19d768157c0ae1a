"""The world base's pretraining schedule and loss weights (issue 14's v-prediction / zero-terminal-SNR
option), against diffusers' own rescaling and values by hand; the schedule travels with the weights; a
short pretraining end to end."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from krona_core.train.diffusers_backend import sd_alphas_cumprod
from krona_core.world import model as world_model
from krona_core.world import pretrain


def test_the_zero_terminal_snr_schedule_is_diffusers_rescaling():
    from diffusers import DDIMScheduler

    ours = sd_alphas_cumprod(zero_terminal_snr=True).double()
    theirs = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                           rescale_betas_zero_snr=True).alphas_cumprod.double()
    assert ours[-1] == 0 and theirs[-1] < 1e-6
    assert torch.allclose(ours[:-1], theirs[:-1], rtol=1e-5, atol=1e-9)
    assert ours[0] == pytest.approx(float(sd_alphas_cumprod()[0]), rel=1e-6)  # the first step is kept


def test_loss_weights_by_hand():
    ab, eps_weight = pretrain.schedule_and_weights(pretrain.Recipe(prediction="epsilon", zero_terminal_snr=False,
                                                                   snr_floor=0.0))
    snr = ab.double() / (1 - ab.double())
    for t in (0, 400, 999):  # min-SNR-5 for ε: min(snr, 5) / snr
        assert float(eps_weight[t]) == pytest.approx(min(float(snr[t]), 5.0) / float(snr[t]), rel=1e-5)
    ab, v_weight = pretrain.schedule_and_weights(pretrain.Recipe(prediction="v_prediction", zero_terminal_snr=True,
                                                                 snr_floor=1.0))
    assert float(v_weight[-1]) == pytest.approx(1.0)  # pure noise: v = -x0, weighted as plain v loss
    snr0 = float(ab[0]) / (1 - float(ab[0]))
    assert float(v_weight[0]) == pytest.approx(5.0 / (snr0 + 1), rel=1e-5)


def test_epsilon_on_zero_terminal_snr_is_refused():
    with pytest.raises(ValueError, match="zero_terminal_snr needs prediction='v_prediction'"):
        pretrain.Recipe(prediction="epsilon", zero_terminal_snr=True)
    with pytest.raises(ValueError, match="Recipe.prediction"):
        pretrain.Recipe(prediction="sample")


def test_the_schedule_travels_with_the_weights(tmp_path):
    shipped, _ = world_model.load()
    assert (shipped.prediction_type, shipped.zero_terminal_snr) == ("v_prediction", True)
    model = world_model.build(0)
    world_model.save(model, tmp_path / "old.safetensors", {"seed": 0})  # a file from before the option
    old, _ = world_model.load(tmp_path / "old.safetensors")
    assert (old.denoiser().prediction_type, float(old.denoiser().alphas_cumprod[-1]) > 0) == ("epsilon", True)
    recipe = pretrain.Recipe()
    world_model.save(model, tmp_path / "base.safetensors", {"prediction": recipe.prediction,
                                                            "zero_terminal_snr": recipe.zero_terminal_snr})
    loaded, _ = world_model.load(tmp_path / "base.safetensors")
    denoiser = loaded.denoiser()
    assert denoiser.prediction_type == "v_prediction" and float(denoiser.alphas_cumprod[-1]) == 0.0


def test_a_short_pretraining_writes_a_loadable_base_with_its_record(tmp_path):
    out = tmp_path / "base.safetensors"
    recipe = pretrain.Recipe(vae_steps=2, decoder_steps=2, dataset=32, unet_steps=3, unet_batch=4, checkpoint_every=2)
    lines: list[str] = []
    pretrain.pretrain(out, recipe, log=lines.append)
    loaded, record = world_model.load(out)
    assert record["unet_steps_done"] == 3 and record["vae_composites"] == 0.5 and record["threads"] >= 1
    assert set(record["phase_seconds"]) == {"vae_s", "decoder_s", "unet_s"}
    assert record == {**record, **dataclasses.asdict(recipe)}
    assert loaded.denoiser().prediction_type == "v_prediction"
    assert any("checkpoint at unet step 2" in line for line in lines)
    with pytest.raises(FileExistsError):
        pretrain.pretrain(out, recipe, log=lines.append)  # never overwritten unless asked
