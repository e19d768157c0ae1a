"""The world's base model: an SD1-shaped pipeline (diffusers AutoencoderKL + UNet2DConditionModel
with cross-attention, transformers CLIPTextModel, SD1 module names) small enough to pretrain on
two CPU cores, and its shipped weights (`weights/world-base.safetensors`, recipe in metadata).

The VAE is trained on the world first (32×32 RGB → 8×8×8 latents, more channels than SD's 4 so
shapes survive the round trip); the UNet predicts v on a zero-terminal-SNR schedule (SD 2.x-style,
`pretrain.py` says why), and the file's recipe tells `load` which; a word
tokenizer over the world's vocabulary plus a few rare words (`sks` among them) the world never
uses, whose embeddings stay at their seeded initialisation — the role rare tokens play in SD.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..train.diffusers_backend import DiffusersDenoiser, sd_alphas_cumprod
from .scenes import VOCAB

WEIGHTS = Path(__file__).with_name("weights") / "world-base.safetensors"
RARE_WORDS = ("sks", "zwx", "ohwx")
SPECIAL = ("<bos>", "<eos>", "<unk>")
WORDS = (*SPECIAL, *VOCAB, *RARE_WORDS)
MAX_TOKENS = 16

TEXT = dict(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=MAX_TOKENS, bos_token_id=0, eos_token_id=1, pad_token_id=1)
UNET = dict(
    sample_size=8, in_channels=8, out_channels=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8,
)
VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 32), layers_per_block=1,
    latent_channels=8, norm_num_groups=4, sample_size=32,
)


class WorldTokenizer:
    """Words → ids over the world's vocabulary; BOS 0, EOS/pad 1, unknown words 2."""

    def __init__(self) -> None:
        assert len(WORDS) <= TEXT["vocab_size"]
        self.ids = {w: i for i, w in enumerate(WORDS)}

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        rows = []
        for prompt in prompts:
            ids = [self.ids.get(w, 2) for w in prompt.lower().replace(",", " ").split()][: MAX_TOKENS - 2]
            ids = [0, *ids, 1]
            rows.append(ids + [1] * (MAX_TOKENS - len(ids)))
        return torch.tensor(rows, dtype=torch.long)


@dataclass
class WorldModel:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: WorldTokenizer
    prediction_type: str = "epsilon"  # or v_prediction (with a zero-terminal-SNR schedule, SD 2.x-style)
    zero_terminal_snr: bool = False

    def denoiser(self, unet: torch.nn.Module | None = None) -> DiffusersDenoiser:
        """The trainer's backend over this model (the same one real SD bases use)."""
        return DiffusersDenoiser(unet or self.unet, self.vae, [self.text_encoder], [self.tokenizer],
                                 sd_alphas_cumprod(zero_terminal_snr=self.zero_terminal_snr), self.prediction_type)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder}


def build(seed: int = 0, scaling_factor: float = 1.0) -> WorldModel:
    """The seeded, untrained model."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE, scaling_factor=scaling_factor)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT))
    unet = UNet2DConditionModel(**UNET)
    return WorldModel(unet, vae, text_encoder, WorldTokenizer())


def save(model: WorldModel, path: str | Path, recipe: dict, overwrite: bool = False) -> None:
    """float16 safetensors, one prefix per network, the recipe (and results) as JSON metadata;
    atomic, and an existing file is replaced only with overwrite=True."""
    from ..files.atomic import write_safetensors

    tensors = {f"{name}.{k}": v.detach().to(torch.float16).contiguous()
               for name, module in model.modules().items() for k, v in module.state_dict().items()
               if not k.endswith("position_ids")}
    meta = {"world.recipe": json.dumps(recipe, sort_keys=True), "world.scaling_factor": str(model.vae.config.scaling_factor)}
    write_safetensors(path, tensors, meta, overwrite)


def load(path: str | Path = WEIGHTS) -> tuple[WorldModel, dict]:
    """The shipped (or a reproduced) base and its recipe; eval mode, no gradients."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no world base; run `python -m krona_core pretrain-world` to make one")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k).float() for k in f.keys()}
    if "world.recipe" not in meta:
        raise ValueError(f"{path}: not a world base (metadata key world.recipe missing)")
    model = build(0, float(meta["world.scaling_factor"]))
    for name, module in model.modules().items():
        own = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
        missing, unexpected = module.load_state_dict(own, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(f"{path}: {name} does not match the world model ({missing[:2]} missing, {unexpected[:2]} unexpected)")
        module.eval().requires_grad_(False)
    recipe = json.loads(meta["world.recipe"])
    model.prediction_type = recipe.get("prediction", "epsilon")
    model.zero_terminal_snr = bool(recipe.get("zero_terminal_snr", False))
    return model, recipe
