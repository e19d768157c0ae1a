"""The trainer: teacher–student recovery, exact resume, cancel, NaN stop, options, backends."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import krona_core
from krona_core.tiny.teacher import build_task, delta_recovery, gap_closed, run_student, tiny_denoiser
from krona_core.tiny.pipeline import build_tiny_pipeline, sample_images
from krona_core.train.config import TrainConfig, TrainingDiverged, TrainingInterrupted
from krona_core.train.data import buckets_for, examples_from_latents, fit_to_bucket, prepare_examples
from krona_core.train.loop import attach_adapters, fit, train
from krona_core.train.objective import lr_factor
from krona_core.train.sampling import generate_class_examples


@pytest.fixture(scope="module")
def task():
    return build_task(seed=0, teacher_seed=1)


@pytest.mark.slow
def test_student_recovers_the_teacher_with_the_default_recipe(task, capsys):
    result, student = run_student(task, TrainConfig())  # the paper's recipe: 500 steps, lr 1e-3, batch 1×4 …
    closed = gap_closed(task, student)
    recovery = delta_recovery(task, result.handles[0], student)
    with capsys.disabled():
        print(f"\nteacher–student: base loss {task.base_loss}, teacher {task.teacher_loss}")
        print(f"gap closed: {closed}")
        values = sorted(recovery.values())
        print(f"per-layer ΔW recovery (relative error on training activations): median {values[len(values) // 2]:.3f}, "
              f"min {values[0]:.3f}, max {values[-1]:.3f} over {len(values)} layers")
    assert closed["train_images"] >= 0.9 and closed["heldout_images"] >= 0.9
    assert all(math.isfinite(v) for v in recovery.values())


def small(**kw) -> TrainConfig:
    return TrainConfig(**{"steps": 8, "grad_accum": 2, "a1": 4, "a2": 4, **kw})


def test_resume_is_bit_identical_to_an_uninterrupted_run(task, tmp_path):
    config = small(steps=10, checkpoint_dir=str(tmp_path / "a"), checkpoint_every=3, lr=3e-3)
    full, _ = run_student(task, config)
    stop_at = {"step": 0}

    def stop() -> bool:
        stop_at["step"] += 1
        return stop_at["step"] > 5  # cancel at the boundary after 5 steps

    student = task.fresh_student()
    config_b = small(steps=10, checkpoint_dir=str(tmp_path / "b"), checkpoint_every=3, lr=3e-3)
    with pytest.raises(TrainingInterrupted) as info:
        train(student, task.examples, config_b, should_stop=stop)
    assert info.value.step == 5 and info.value.checkpoint.endswith("step_000005.krona.safetensors")
    resumed_student = task.fresh_student()
    resumed = train(resumed_student, task.examples, config_b, resume_from=info.value.checkpoint)
    assert resumed.losses == full.losses
    for (path, a), (_, b) in zip(full.handles[0].items(), resumed.handles[0].items()):
        assert torch.equal(a.w1, b.w1) and torch.equal(a.w2, b.w2), path


class NaNAfter:
    """A test backend: the wrapped denoiser, whose predictions turn NaN after `calls` predictions."""

    def __init__(self, denoiser, calls: int):
        self.inner, self.calls = denoiser, calls

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict(self, x_t, t, cond):
        self.calls -= 1
        out = self.inner.predict(x_t, t, cond)
        return out * float("nan") if self.calls < 0 else out


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(task, tmp_path):
    config = small(steps=10, checkpoint_dir=str(tmp_path), checkpoint_every=4)
    student = NaNAfter(task.fresh_student(), calls=6 * config.grad_accum)  # step 6's first prediction is NaN
    handles = attach_adapters(student, config)
    seen = {}

    def record(step, loss, lr):
        if step == 4:
            seen.update({p: (a.w1.detach().clone(), a.w2.detach().clone()) for p, a in handles[0].items()})

    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 6.*step_000004\.krona\.safetensors"):
        fit(student, handles, task.examples, config, on_step=record)
    kept = krona_core.load(tmp_path / "step_000004.krona.safetensors")
    assert kept.training["steps_done"] == 4
    names = dict(zip(handles[0].paths(), handles[0].factors()))
    for path, (w1, w2) in seen.items():
        assert torch.equal(kept.modules[names[path]][0], w1) and torch.equal(kept.modules[names[path]][1], w2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000004.krona.safetensors", "step_000004.state.safetensors"]


def test_a_failed_run_leaves_the_model_unhooked(task):
    student = NaNAfter(task.fresh_student(), calls=3)
    unet = student.inner.unet
    assert not any(m._forward_hooks for m in unet.modules())
    with pytest.raises(TrainingDiverged):
        train(student, task.examples, small(steps=3))
    assert not any(m._forward_hooks for m in unet.modules())  # every adapter hook was removed


def test_prior_preservation_v_prediction_min_snr_noise_offset_and_schedules():
    pipe = build_tiny_pipeline(0)
    denoiser = tiny_denoiser(pipe)
    denoiser.prediction_type = "v_prediction"
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    examples = examples_from_latents(latents, ["a photo of sks toy"] * 3, scale=2)
    classes = generate_class_examples(denoiser, "a photo of a toy", 2, (4, 8, 8), seed=3, steps=4)
    assert len(classes) == 2 and all(c.is_class and torch.isfinite(c.latent).all() for c in classes)
    config = small(steps=6, min_snr_gamma=5.0, noise_offset=0.05, schedule="cosine", warmup_steps=2,
                   prior_loss_weight=0.5, validate_every=3, validation_prompt="a photo of sks toy", validation_steps=3)
    result = train(denoiser, examples, config, class_examples=classes)
    assert len(result.losses) == 6 and all(math.isfinite(x) for x in result.losses)
    assert [step for step, _ in result.previews] == [3, 6]
    assert result.previews[0][1].shape == (3, 16, 16) and 0 <= float(result.previews[0][1].min())
    assert result.record["prior_preservation"] and result.record["class_images"] == 2
    assert result.record["class_prompt"] == "a photo of a toy"
    # schedule factors: linear warm-up, then cosine down to 0
    assert [round(lr_factor(s, config), 4) for s in (0, 1, 2, 6)] == [0.5, 1.0, 1.0, 0.0]


def test_text_encoder_training_and_budget():
    pipe = build_tiny_pipeline(0)
    denoiser = tiny_denoiser(pipe)
    examples = examples_from_latents(torch.randn(2, 4, 8, 8), ["sks toy"] * 2, scale=2)
    result = train(denoiser, examples, small(steps=3, train_text_encoder=True, text_encoder_lr=5e-4, budget=6000, a1=8, a2=4))
    networks = sorted(h.network for h in result.handles)
    assert networks == ["te", "unet"]
    unet_handle = next(h for h in result.handles if h.network == "unet")
    assert unet_handle.num_parameters() <= 6000
    te_handle = next(h for h in result.handles if h.network == "te")
    assert any(float(a.w2.detach().abs().sum()) > 0 for _, a in te_handle.items())  # the text encoder learned


def test_sdxl_layout_with_two_text_encoders_and_size_conditioning():
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from conftest import make_unet
    from krona_core.tiny.pipeline import HashTokenizer, TINY_VAE
    from krona_core.train.diffusers_backend import DiffusersDenoiser, sd_alphas_cumprod

    torch.manual_seed(0)
    unet = make_unet("sdxl")  # cross-attention 2048 = 768 + 1280, pooled 1280 + 6×8 time ids
    te1 = CLIPTextModel(CLIPTextConfig(vocab_size=1000, hidden_size=768, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=1))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=1000, hidden_size=1280, intermediate_size=64, num_hidden_layers=2,
                                                     num_attention_heads=4, max_position_embeddings=16, projection_dim=8,
                                                     bos_token_id=0, eos_token_id=1))
    denoiser = DiffusersDenoiser(unet, AutoencoderKL(**TINY_VAE), [te1, te2], [HashTokenizer(), HashTokenizer()], sd_alphas_cumprod())
    images = [img for img in (sample_images(3, 32, 0) + 1) / 2]
    images[1] = torch.nn.functional.interpolate(images[1][None], size=(32, 48))[0]  # a landscape image
    examples = prepare_examples(denoiser, images, ["sks toy"] * 3, resolution=32, bucket_step=8)
    shapes = [tuple(e.latent.shape) for e in examples]
    assert shapes[0] == shapes[2] == (4, 16, 16) and shapes[1][2] > shapes[1][1]  # a landscape bucket
    cond = denoiser.encode_prompts(["sks toy"], [examples[1].size])
    assert cond["encoder_hidden_states"].shape[-1] == 2048 and cond["time_ids"].shape == (1, 6)
    assert cond["time_ids"][0, :2].tolist() == [32.0, 48.0]  # original size (h, w) of the landscape image
    assert cond["time_ids"][0, 4:].tolist() == [s * 2 for s in shapes[1][1:]]  # target size: the bucket
    result = train(denoiser, examples, small(steps=3, train_text_encoder=True, batch_size=2))
    assert sorted(h.network for h in result.handles) == ["te1", "te2", "unet"]
    assert all(math.isfinite(x) for x in result.losses)


def test_buckets_and_fitting():
    buckets = buckets_for(512)
    assert (512, 512) in buckets and all(h % 64 == 0 and w % 64 == 0 for h, w in buckets)
    assert all(h * w <= 512 * 512 for h, w in buckets)
    image = torch.rand(3, 300, 600)
    fitted, size = fit_to_bucket(image, buckets)
    h, w = fitted.shape[1:]
    assert w > h and abs(w / h - 2.0) < 0.35
    assert size.original == (300, 600) and size.target == (h, w)


def test_config_validation():
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="exp").validate()
    with pytest.raises(ValueError, match="checkpoint_dir"):
        TrainConfig(checkpoint_every=5).validate()
    with pytest.raises(ValueError, match="learning rate"):
        TrainConfig(lr=float("nan")).validate()


def test_gradient_checkpointing_gives_the_same_gradients():
    pipe = build_tiny_pipeline(0)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    grads = []
    for checkpointing in (False, True):
        unet = copy.deepcopy(pipe.unet)
        if checkpointing:
            unet.enable_gradient_checkpointing()
            unet.train()
        handle = krona_core.attach(unet, a1=4, a2=4, seed=0)
        with torch.no_grad():
            for _, adapter in handle.items():
                adapter.w2.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
        cond = pipe.encode_prompt(["sks toy", "sks toy"])
        out = unet(latents, torch.tensor([10, 600]), cond).sample
        out.square().mean().backward()
        grads.append([p.grad.clone() for p in handle.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
