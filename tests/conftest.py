"""Shared fixtures: tiny seeded models built in the tests (never downloaded)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import pytest
import torch

# Small UNets with the block structure of each base (widths cut down, layout kept).
TINY_UNETS = {
    "sd1": dict(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8,
    ),
    "sd2": dict(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=1024, attention_head_dim=(4, 8), use_linear_projection=True,
    ),
    "sdxl": dict(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2), cross_attention_dim=2048, attention_head_dim=(4, 8),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 + 6 * 8,
    ),
}


def make_unet(base: str, seed: int = 0) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**TINY_UNETS[base]).eval()


def unet_inputs(base: str, unet: torch.nn.Module, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    kwargs = dict(
        sample=torch.randn(2, 4, 8, 8, generator=g),
        timestep=torch.tensor([10, 700]),
        encoder_hidden_states=torch.randn(2, 5, cfg.cross_attention_dim, generator=g),
    )
    if cfg.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim, generator=g),
            "time_ids": torch.randn(2, 6, generator=g),
        }
    return kwargs


def make_text_encoder(width: int = 32, projection: bool = False, seed: int = 0) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=100, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=8, projection_dim=width,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(config).eval()


def randomize(handle, std: float = 0.05, seed: int = 0) -> None:
    """Give every adapter non-zero factors (a freshly attached adapter has ΔW = 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, adapter in handle.items():
            adapter.w1.copy_(torch.randn(adapter.w1.shape, generator=g) * std * 4)
            adapter.w2.copy_(torch.randn(adapter.w2.shape, generator=g) * std)


@pytest.fixture(params=["sd1", "sd2", "sdxl"])
def base(request) -> str:
    return request.param


_passed = 0


def pytest_runtest_logreport(report):
    global _passed
    if report.when == "call" and report.passed:
        _passed += 1


def pytest_sessionfinish(session, exitstatus):
    # a run in which nothing passed (all skipped / deselected) must not look green
    if exitstatus == 0 and _passed == 0 and not session.config.option.collectonly:
        session.exitstatus = 5
