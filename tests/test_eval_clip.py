"""The CLIP-I / CLIP-T / DINO code path on tiny random models of those shapes saved to disk, checked
against the same numbers computed by hand from the models' own forward passes."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from krona_core.eval import clip


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, ViTConfig, ViTModel

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    chars = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{c: 2 + i for i, c in enumerate(chars)},
             **{c + "</w>": 28 + i for i, c in enumerate(chars)}}
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    text = dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(root / "clip")
    CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt")).save_pretrained(root / "clip")
    ViTModel(ViTConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                       patch_size=8), add_pooling_layer=False).save_pretrained(root / "dino")
    return root


def test_clip_and_dino_scores_match_a_hand_computation(models):
    from transformers import CLIPModel, CLIPTokenizer, ViTModel

    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 48, 40, generator=g) for _ in range(3)]
    refs = [torch.rand(3, 32, 32, generator=g) for _ in range(2)]
    prompts = ["a sks circle", "a red square", "a dog"]
    scores = clip.clip_scores(models / "clip", images, refs, prompts)
    model, tok = CLIPModel.from_pretrained(models / "clip").eval(), CLIPTokenizer.from_pretrained(models / "clip")
    with torch.no_grad():
        def embed(batch):
            return clip._features(model.get_image_features(pixel_values=clip._prepare(batch, 32, clip.CLIP_MEAN, clip.CLIP_STD)))
        gen, ref = F.normalize(embed(images), dim=-1), F.normalize(embed(refs), dim=-1)
        ids = tok(prompts, padding=True, return_tensors="pt")
        text = F.normalize(clip._features(model.get_text_features(**ids)), dim=-1)
    assert scores["clip_i"] == pytest.approx(float((gen @ ref.T).mean()), abs=1e-6)
    assert scores["clip_t"] == pytest.approx(float(torch.diag(gen @ text.T).mean()), abs=1e-6)
    assert clip.clip_scores(models / "clip", refs, refs, prompts[:2])["clip_i"] < 1.0 + 1e-6
    dino = clip.dino_score(models / "dino", images, images)
    vit = ViTModel.from_pretrained(models / "dino", add_pooling_layer=False).eval()
    with torch.no_grad():
        cls = F.normalize(vit(pixel_values=clip._prepare(images, 32, clip.IMAGENET_MEAN, clip.IMAGENET_STD)).last_hidden_state[:, 0], dim=-1)
    assert dino == pytest.approx(float((cls @ cls.T).mean()), abs=1e-6)


def test_one_prompt_per_image_is_required(models):
    with pytest.raises(ValueError, match="one per image"):
        clip.clip_scores(models / "clip", [torch.rand(3, 32, 32)], [torch.rand(3, 32, 32)], ["a", "b"])


def test_the_eval_command_scores_images_on_disk(models, tmp_path, capsys):
    from PIL import Image

    from krona_core.cli.main import main
    from krona_core.util.images import load_folder

    g = torch.Generator().manual_seed(2)
    for folder, count in (("gen", 2), ("ref", 2)):
        (tmp_path / folder).mkdir()
        for i in range(count):
            pixels = (torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / folder / f"{i}.png")
    (tmp_path / "prompts.txt").write_text("a sks circle\na red square\n")
    argv = ["eval", "--images", str(tmp_path / "gen"), "--references", str(tmp_path / "ref"), "--prompts",
            str(tmp_path / "prompts.txt"), "--clip", str(models / "clip"), "--dino", str(models / "dino"), "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    gen, ref = [i for _, i in load_folder(tmp_path / "gen")], [i for _, i in load_folder(tmp_path / "ref")]
    expected = clip.clip_scores(models / "clip", gen, ref, ["a sks circle", "a red square"])
    assert printed["clip_i"] == pytest.approx(expected["clip_i"]) and printed["clip_t"] == pytest.approx(expected["clip_t"])
    assert printed["dino"] == pytest.approx(clip.dino_score(models / "dino", gen, ref))
    assert main(argv[:3] + ["--json"]) == 2  # no references, no model: a one-line refusal
