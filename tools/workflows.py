"""Source of the example workflows: each graph is described once here and written in both
formats — the frontend's UI format (drag and drop, with Note nodes) to example_workflows/ and
the API format (headless /prompt) to example_workflows/api/ — so the twins cannot drift apart.

    python tools/workflows.py          # rewrite both folders
    python tools/workflows.py --check  # exit 1 if the committed files differ from this source
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UI_DIR = ROOT / "example_workflows"
API_DIR = UI_DIR / "api"

# Input order of every node type used (link inputs and widgets as the frontend lays them out).
# ("name", "TYPE") is a link input, ("name", None) a widget; "seed+" marks control_after_generate.
NODE_TYPES: dict[str, dict] = {
    "CheckpointLoaderSimple": {"in": [("ckpt_name", None)], "out": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]},
    "LoraLoader": {"in": [("model", "MODEL"), ("clip", "CLIP"), ("lora_name", None), ("strength_model", None), ("strength_clip", None)],
                   "out": [("MODEL", "MODEL"), ("CLIP", "CLIP")]},
    "CLIPTextEncode": {"in": [("clip", "CLIP"), ("text", None)], "out": [("CONDITIONING", "CONDITIONING")]},
    "EmptyLatentImage": {"in": [("width", None), ("height", None), ("batch_size", None)], "out": [("LATENT", "LATENT")]},
    "KSampler": {"in": [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT"),
                        ("seed+", None), ("steps", None), ("cfg", None), ("sampler_name", None), ("scheduler", None), ("denoise", None)],
                 "out": [("LATENT", "LATENT")]},
    "VAEDecode": {"in": [("samples", "LATENT"), ("vae", "VAE")], "out": [("IMAGE", "IMAGE")]},
    "VAEEncode": {"in": [("pixels", "IMAGE"), ("vae", "VAE")], "out": [("LATENT", "LATENT")]},
    "SaveImage": {"in": [("images", "IMAGE"), ("filename_prefix", None)], "out": []},
    "PreviewImage": {"in": [("images", "IMAGE")], "out": []},
    "LoadImage": {"in": [("image", None), ("upload", None)], "out": [("IMAGE", "IMAGE"), ("MASK", "MASK")]},
    "ImageBatch": {"in": [("image1", "IMAGE"), ("image2", "IMAGE")], "out": [("IMAGE", "IMAGE")]},
    "Canny": {"in": [("image", "IMAGE"), ("low_threshold", None), ("high_threshold", None)], "out": [("IMAGE", "IMAGE")]},
    "ControlNetLoader": {"in": [("control_net_name", None)], "out": [("CONTROL_NET", "CONTROL_NET")]},
    "ControlNetApplyAdvanced": {"in": [("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("control_net", "CONTROL_NET"),
                                       ("image", "IMAGE"), ("vae", "VAE"), ("strength", None), ("start_percent", None), ("end_percent", None)],
                                "out": [("positive", "CONDITIONING"), ("negative", "CONDITIONING")]},
    "ApplyKronA": {"in": [("model", "MODEL"), ("krona_name", None), ("strength_model", None), ("clip", "CLIP"), ("strength_clip", None),
                          ("bypass", None), ("block_strengths", None)], "out": [("MODEL", "MODEL"), ("CLIP", "CLIP")]},
    "TrainKronA": {"in": [("model", "MODEL"), ("clip", "CLIP"), ("vae", "VAE"), ("images", "IMAGE"), ("instance_prompt", None),
                          ("steps", None), ("learning_rate", None), ("a1", None), ("a2", None), ("targets", None), ("seed+", None),
                          ("captions", None), ("class_prompt", None), ("class_images", "IMAGE"), ("num_class_images", None),
                          ("prior_loss_weight", None), ("parameter_budget", None), ("schedule", None), ("warmup_steps", None),
                          ("batch_size", None), ("grad_accum", None), ("resolution", None), ("crop", None), ("shuffle_caption", None),
                          ("keep_tokens", None), ("caption_dropout", None), ("train_text_encoder", None),
                          ("noise_offset", None), ("min_snr_gamma", None), ("checkpoint_every", None), ("preview_every", None),
                          ("validation_prompt", None), ("name", None), ("latents", "LATENT"), ("conditioning", "CONDITIONING"),
                          ("timestep_sampling", None), ("flow_shift", None)],
                   "out": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("KRONA", "KRONA"), ("loss_curve", "IMAGE"), ("previews", "IMAGE")]},
    "UNETLoader": {"in": [("unet_name", None), ("weight_dtype", None)], "out": [("MODEL", "MODEL")]},
    "DualCLIPLoader": {"in": [("clip_name1", None), ("clip_name2", None), ("type", None), ("device", None)],
                       "out": [("CLIP", "CLIP")]},
    "VAELoader": {"in": [("vae_name", None)], "out": [("VAE", "VAE")]},
    "FluxGuidance": {"in": [("conditioning", "CONDITIONING"), ("guidance", None)], "out": [("CONDITIONING", "CONDITIONING")]},
    "EmptySD3LatentImage": {"in": [("width", None), ("height", None), ("batch_size", None)], "out": [("LATENT", "LATENT")]},
    "SaveKronA": {"in": [("krona", "KRONA"), ("filename_prefix", None), ("trigger_words", None), ("metadata", None), ("float32", None)],
                  "out": [("path", "STRING")]},
}

# the node's own defaults (0 / "auto": the base family's recipe), checkpoints and previews every 100 steps
TRAIN_DEFAULTS = dict(steps=0, learning_rate=0.001, a1=64, a2=8, targets="attn", seed=0, captions="", class_prompt="",
                      num_class_images=0, prior_loss_weight=1.0, parameter_budget=0, schedule="constant", warmup_steps=0,
                      batch_size=1, grad_accum=4, resolution=0, crop="auto", shuffle_caption=False, keep_tokens=0,
                      caption_dropout=0.0, train_text_encoder=False, noise_offset=0.0, min_snr_gamma=0.0,
                      checkpoint_every=100, preview_every=100, validation_prompt="", name="my-subject",
                      timestep_sampling="auto", flow_shift=0.0)


class Graph:
    def __init__(self, title: str):
        self.title = title
        self.nodes: list[dict] = []
        self.links: list[list] = []
        self.api: dict[str, dict] = {}

    def add(self, node_type: str, pos: tuple[int, int], widgets: dict, links: dict | None = None, title: str | None = None,
            size: tuple[int, int] = (320, 130)) -> int:
        spec = NODE_TYPES[node_type]
        node_id = len(self.nodes) + 1
        links = links or {}
        inputs, values, api_inputs = [], [], {}
        for name, kind in spec["in"]:
            if kind is not None:
                if name in links:
                    source, slot = links[name]
                    link_id = len(self.links) + 1
                    self.links.append([link_id, source, slot, node_id, len(inputs), kind])
                    self._output(source, slot)["links"].append(link_id)
                    inputs.append({"name": name, "type": kind, "link": link_id})
                    api_inputs[name] = [str(source), slot]
                continue
            if name == "upload":
                values.append("image")
                continue
            key = name.rstrip("+")
            values.append(widgets[key])
            api_inputs[key] = widgets[key]
            if name.endswith("+"):
                values.append("fixed")  # control_after_generate: keep the seed, the image is reproducible
        node = {"id": node_id, "type": node_type, "pos": list(pos), "size": list(size), "flags": {}, "order": node_id - 1,
                "mode": 0, "inputs": inputs,
                "outputs": [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(spec["out"])],
                "properties": {"Node name for S&R": node_type}, "widgets_values": values}
        if title:
            node["title"] = title
        self.nodes.append(node)
        self.api[str(node_id)] = {"class_type": node_type, "inputs": api_inputs, "_meta": {"title": title or node_type}}
        return node_id

    def note(self, text: str, pos: tuple[int, int], size: tuple[int, int] = (320, 330)) -> None:
        node_id = len(self.nodes) + 1
        self.nodes.append({"id": node_id, "type": "Note", "pos": list(pos), "size": list(size), "flags": {}, "order": node_id - 1,
                           "mode": 0, "inputs": [], "outputs": [], "properties": {"text": ""}, "widgets_values": [text],
                           "color": "#432", "bgcolor": "#653"})

    def _output(self, node_id: int, slot: int) -> dict:
        return self.nodes[node_id - 1]["outputs"][slot]

    def ui(self) -> dict:
        for node in self.nodes:
            for output in node["outputs"]:
                if not output["links"]:
                    output["links"] = None
        return {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes, "links": self.links,
                "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}, "krona": {"title": self.title}},
                "version": 0.4}


def _sampling(g: Graph, model, clip, vae, x: int, prompt: str, negative: str, latent=None, seed: int = 42,
              denoise: float = 1.0, width: int = 512, height: int = 512, prefix: str = "KronA") -> int:
    pos = g.add("CLIPTextEncode", (x, 40), {"text": prompt}, {"clip": clip}, title="Positive prompt (use the trigger words)")
    neg = g.add("CLIPTextEncode", (x, 260), {"text": negative}, {"clip": clip}, title="Negative prompt")
    if latent is None:
        latent = (g.add("EmptyLatentImage", (x, 480), {"width": width, "height": height, "batch_size": 1}), 0)
    sampler = g.add("KSampler", (x + 360, 40), {"seed": seed, "steps": 25, "cfg": 7.0, "sampler_name": "euler",
                                                "scheduler": "normal", "denoise": denoise},
                    {"model": model, "positive": (pos, 0), "negative": (neg, 0), "latent_image": latent}, size=(320, 270))
    decode = g.add("VAEDecode", (x + 720, 40), {}, {"samples": (sampler, 0), "vae": vae}, size=(320, 60))
    return g.add("SaveImage", (x + 720, 150), {"filename_prefix": prefix}, {"images": (decode, 0)}, size=(380, 400))


def _flux_loaders(g: Graph, clip_y: int, vae_y: int) -> tuple[int, int, int]:
    """Load Diffusion Model, DualCLIPLoader (clip_l + t5xxl) and Load VAE of FLUX.1 [dev], in the first column."""
    unet = g.add("UNETLoader", (0, 40), {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}, size=(320, 100))
    clip = g.add("DualCLIPLoader", (0, clip_y), {"clip_name1": "clip_l.safetensors", "clip_name2": "t5xxl_fp16.safetensors",
                                                 "type": "flux", "device": "default"}, size=(320, 130))
    vae = g.add("VAELoader", (0, vae_y), {"vae_name": "ae.safetensors"}, size=(320, 70))
    return unet, clip, vae


#: FLUX.1 [dev] is guidance-distilled: cfg 1 (FluxGuidance carries the guidance), 20 steps, scheduler simple
FLUX_SAMPLER = {"seed": 42, "steps": 20, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}


def _checkpoint_and_krona(g: Graph, ckpt_name: str = "v1-5-pruned-emaonly.safetensors",
                          krona_name: str = "my-subject.krona.safetensors", block_strengths: str = "") -> tuple[int, int]:
    """Load Checkpoint → Apply KronA (model and clip), the head of every inference workflow."""
    ckpt = g.add("CheckpointLoaderSimple", (0, 40), {"ckpt_name": ckpt_name})
    krona = g.add("ApplyKronA", (0, 220), {"krona_name": krona_name, "strength_model": 1.0, "strength_clip": 1.0,
                                           "bypass": False, "block_strengths": block_strengths},
                  {"model": (ckpt, 0), "clip": (ckpt, 1)}, size=(320, 200))
    return ckpt, krona


def txt2img() -> Graph:
    g = Graph("KronA txt2img (SD1.5), with a LoRA stacked after it")
    g.note("1. Checkpoint: an SD1.5 model, e.g. v1-5-pruned-emaonly.safetensors in models/checkpoints.\n"
           "2. Apply KronA: a .krona.safetensors from models/krona (or models/loras), e.g. my-subject.krona.safetensors "
           "from the Train KronA workflow. strength_model scales ΔW on the UNet, strength_clip on the text encoder "
           "(when the file adapts it).\n3. LoRA after it: any SD1.5 LoRA, e.g. my-style.safetensors; KronA and LoRA "
           "patches stack through ComfyUI's own model patching.\n4. Put the file's trigger words (shown on the Apply KronA "
           "node) into the prompt.", (0, 480))
    ckpt, krona = _checkpoint_and_krona(g)
    lora = g.add("LoraLoader", (360, 480), {"lora_name": "my-style.safetensors", "strength_model": 0.6, "strength_clip": 0.6},
                 {"model": (krona, 0), "clip": (krona, 1)})
    _sampling(g, (lora, 0), (lora, 1), (ckpt, 2), 720, "a photo of sks dog on a beach", "blurry, lowres", prefix="KronA-txt2img")
    return g


def controlnet() -> Graph:
    g = Graph("KronA + ControlNet (Canny edges), SD1.5")
    g.note("1. Checkpoint: an SD1.5 model, e.g. v1-5-pruned-emaonly.safetensors.\n2. Apply KronA: my-subject.krona.safetensors "
           "(models/krona).\n3. Load Image: the pose/composition reference (example.png in ComfyUI/input); Canny turns it "
           "into edges.\n4. ControlNet: control_v11p_sd15_canny.safetensors in models/controlnet; Apply ControlNet conditions "
           "both prompts on the edges.\n5. The sampler uses the KronA-patched model: subject from KronA, layout from the edges.",
           (0, 480), size=(320, 380))
    ckpt, krona = _checkpoint_and_krona(g)
    image = g.add("LoadImage", (360, 480), {"image": "example.png"}, size=(320, 320))
    edges = g.add("Canny", (720, 480), {"low_threshold": 0.4, "high_threshold": 0.8}, {"image": (image, 0)})
    cn = g.add("ControlNetLoader", (720, 680), {"control_net_name": "control_v11p_sd15_canny.safetensors"})
    pos = g.add("CLIPTextEncode", (360, 40), {"text": "a photo of sks dog, studio lighting"}, {"clip": (krona, 1)}, title="Positive prompt")
    neg = g.add("CLIPTextEncode", (360, 260), {"text": "blurry, lowres"}, {"clip": (krona, 1)}, title="Negative prompt")
    apply = g.add("ControlNetApplyAdvanced", (1080, 380), {"strength": 0.9, "start_percent": 0.0, "end_percent": 1.0},
                  {"positive": (pos, 0), "negative": (neg, 0), "control_net": (cn, 0), "image": (edges, 0), "vae": (ckpt, 2)},
                  size=(320, 190))
    latent = g.add("EmptyLatentImage", (720, 260), {"width": 512, "height": 512, "batch_size": 1})
    sampler = g.add("KSampler", (1080, 40), {"seed": 7, "steps": 25, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
                                             "denoise": 1.0},
                    {"model": (krona, 0), "positive": (apply, 0), "negative": (apply, 1), "latent_image": (latent, 0)}, size=(320, 270))
    decode = g.add("VAEDecode", (1440, 40), {}, {"samples": (sampler, 0), "vae": (ckpt, 2)}, size=(320, 60))
    g.add("SaveImage", (1440, 150), {"filename_prefix": "KronA-controlnet"}, {"images": (decode, 0)}, size=(380, 400))
    g.add("PreviewImage", (1440, 600), {}, {"images": (edges, 0)}, title="Canny edges", size=(380, 300))
    return g


def train() -> Graph:
    g = Graph("Train KronA → Save KronA → Apply KronA → sample (SD1.5)")
    g.note("1. Checkpoint: the SD1.5 model to personalise, e.g. v1-5-pruned-emaonly.safetensors.\n2. Load Image ×2 (+ Image Batch): "
           "3–10 photos of the subject in ComfyUI/input (subject1.png, subject2.png here; add more through more Image Batch nodes).\n"
           "3. Train KronA: the paper's defaults — (64, 8) factors on attention q/k/v/out, lr 1e-3, batch 1 × accumulation 4; "
           "steps 0, resolution 0 and crop auto take the base's recipe (SD1.5: 500 steps at 512 px, random crop; SDXL: 1000 "
           "at 1024 px), and the node's text says what it applied. The instance prompt needs a rare token (sks); it is stored as the trigger words. The live loss chart "
           "appears on the node; Cancel stops at a step boundary and keeps the last checkpoint (models/krona/checkpoints/).\n"
           "4. Save KronA writes models/krona/my-subject_00001.krona.safetensors; Apply KronA can load it later.\n"
           "5. The trained MODEL/CLIP outputs sample right away; the loss curve is previewed.", (0, 1060), size=(320, 520))
    ckpt = g.add("CheckpointLoaderSimple", (0, 40), {"ckpt_name": "v1-5-pruned-emaonly.safetensors"})
    img1 = g.add("LoadImage", (0, 220), {"image": "subject1.png"}, size=(300, 320))
    img2 = g.add("LoadImage", (0, 580), {"image": "subject2.png"}, size=(300, 320))
    batch = g.add("ImageBatch", (0, 940), {}, {"image1": (img1, 0), "image2": (img2, 0)}, size=(300, 70))
    trainer = g.add("TrainKronA", (340, 40), {"instance_prompt": "a photo of sks dog", **TRAIN_DEFAULTS},
                    {"model": (ckpt, 0), "clip": (ckpt, 1), "vae": (ckpt, 2), "images": (batch, 0)}, size=(360, 1060))
    g.add("SaveKronA", (740, 40), {"filename_prefix": "my-subject", "trigger_words": "sks dog", "metadata": "", "float32": False},
          {"krona": (trainer, 2)}, size=(320, 200))
    g.add("PreviewImage", (740, 300), {}, {"images": (trainer, 3)}, title="Loss curve", size=(420, 300))
    _sampling(g, (trainer, 0), (trainer, 1), (ckpt, 2), 1200, "a photo of sks dog in a garden", "blurry, lowres",
              prefix="KronA-trained")
    return g


def sdxl() -> Graph:
    g = Graph("KronA txt2img (SDXL), both text encoders")
    g.note("1. Checkpoint: an SDXL base model, e.g. sd_xl_base_1.0.safetensors.\n2. Apply KronA: an SDXL KronA file, e.g. "
           "my-subject-sdxl.krona.safetensors (SDXL files carry lora_te1_/lora_te2_ modules for the two text encoders; "
           "strength_clip scales both).\n3. 1024×1024 is SDXL's native size.", (0, 480))
    ckpt, krona = _checkpoint_and_krona(g, "sd_xl_base_1.0.safetensors", "my-subject-sdxl.krona.safetensors")
    _sampling(g, (krona, 0), (krona, 1), (ckpt, 2), 360, "a photo of sks dog on a beach", "blurry, lowres",
              width=1024, height=1024, prefix="KronA-sdxl")
    return g


def img2img() -> Graph:
    g = Graph("KronA img2img at per-block strengths (SD1.5)")
    g.note("1. Checkpoint: v1-5-pruned-emaonly.safetensors.\n2. Load Image: the picture to rework (example.png in ComfyUI/input).\n"
           "3. Apply KronA with block_strengths 'input:0.4, middle:0.6, output:1.0': the subject's identity mostly from the "
           "output (decoder) blocks. Other forms: 'output3-5:0', 'default:0.5'.\n4. KSampler denoise 0.6 keeps the composition.",
           (0, 480))
    ckpt, krona = _checkpoint_and_krona(g, block_strengths="input:0.4, middle:0.6, output:1.0")
    image = g.add("LoadImage", (360, 480), {"image": "example.png"}, size=(320, 320))
    encode = g.add("VAEEncode", (720, 480), {}, {"pixels": (image, 0), "vae": (ckpt, 2)})
    _sampling(g, (krona, 0), (krona, 1), (ckpt, 2), 720, "a photo of sks dog, oil painting", "blurry, lowres",
              latent=(encode, 0), denoise=0.6, prefix="KronA-img2img")
    return g


def flux() -> Graph:
    g = Graph("KronA txt2img (FLUX.1 [dev])")
    g.note("1. Load Diffusion Model: flux1-dev.safetensors in models/diffusion_models (fp8 weights work too: set "
           "weight_dtype, or use bypass on Apply KronA).\n2. DualCLIPLoader: clip_l.safetensors and t5xxl_fp16.safetensors "
           "in models/text_encoders, type flux. Load VAE: ae.safetensors.\n3. Apply KronA: a FLUX.1 KronA file, e.g. "
           "my-subject-flux.krona.safetensors; FLUX files adapt the diffusion model only (lora_unet_double_blocks_…, "
           "fused qkv as one module), so CLIP stays unconnected.\n4. FLUX [dev] is guidance-distilled: FluxGuidance 3.5, "
           "KSampler cfg 1.0 (the negative prompt is unused), 20 steps, scheduler simple.", (0, 520), size=(320, 400))
    unet, clip, vae = _flux_loaders(g, 200, 390)
    krona = g.add("ApplyKronA", (360, 40), {"krona_name": "my-subject-flux.krona.safetensors", "strength_model": 1.0,
                                            "strength_clip": 1.0, "bypass": False, "block_strengths": ""},
                  {"model": (unet, 0)}, size=(320, 200))
    prompt = g.add("CLIPTextEncode", (360, 300), {"text": "a photo of sks dog on a beach"}, {"clip": (clip, 0)},
                   title="Prompt (use the trigger words)")
    guided = g.add("FluxGuidance", (360, 490), {"guidance": 3.5}, {"conditioning": (prompt, 0)}, size=(320, 80))
    latent = g.add("EmptySD3LatentImage", (360, 630), {"width": 1024, "height": 1024, "batch_size": 1}, size=(320, 110))
    sampler = g.add("KSampler", (720, 40), FLUX_SAMPLER,
                    {"model": (krona, 0), "positive": (guided, 0), "negative": (guided, 0), "latent_image": (latent, 0)},
                    size=(320, 270))
    decode = g.add("VAEDecode", (1080, 40), {}, {"samples": (sampler, 0), "vae": (vae, 0)}, size=(320, 60))
    g.add("SaveImage", (1080, 150), {"filename_prefix": "KronA-flux"}, {"images": (decode, 0)}, size=(380, 400))
    return g


def flux_train() -> Graph:
    g = Graph("Train KronA on FLUX.1 latents + conditioning → Save KronA → sample")
    g.note("1. Load Diffusion Model flux1-dev.safetensors, DualCLIPLoader (clip_l + t5xxl, type flux) and Load VAE ae.safetensors, "
           "as in the FLUX txt2img example.\n2. Load Image ×2 → Image Batch → VAE Encode: the subject photos as FLUX latents "
           "(about 1024 px; the trainer takes them as they are).\n3. CLIP Text Encode the instance prompt, FluxGuidance 1.0 "
           "(the guidance input kohya and ai-toolkit train FLUX [dev] with).\n4. Train KronA gets latents + conditioning "
           "instead of images + prompt, so any encoder's conditioning works (T5, Qwen-VL …). timestep_sampling auto = the "
           "family's σ rule (FLUX: logit-normal with the resolution-dependent shift; SD3: shift 3); steps 0 = the family's "
           "recipe. The instance prompt is stored as the trigger words.\n5. The trained MODEL samples right away "
           "(FluxGuidance 3.5, cfg 1). Previews are off: they need a text encoder wired to Train KronA's clip input.", (0, 1220), size=(320, 560))
    unet, clip, vae = _flux_loaders(g, 180, 350)
    img1 = g.add("LoadImage", (0, 460), {"image": "subject1.png"}, size=(300, 320))
    img2 = g.add("LoadImage", (0, 820), {"image": "subject2.png"}, size=(300, 320))
    batch = g.add("ImageBatch", (360, 460), {}, {"image1": (img1, 0), "image2": (img2, 0)}, size=(300, 70))
    encode = g.add("VAEEncode", (360, 570), {}, {"pixels": (batch, 0), "vae": (vae, 0)}, size=(300, 70))
    text = g.add("CLIPTextEncode", (360, 40), {"text": "a photo of sks dog"}, {"clip": (clip, 0)}, title="Instance prompt")
    cond = g.add("FluxGuidance", (360, 240), {"guidance": 1.0}, {"conditioning": (text, 0)}, size=(320, 80))
    trainer = g.add("TrainKronA", (720, 40), {**TRAIN_DEFAULTS, "instance_prompt": "sks dog", "grad_accum": 1,
                                                  "preview_every": 0},
                    {"model": (unet, 0), "latents": (encode, 0), "conditioning": (cond, 0)}, size=(360, 1140))
    g.add("SaveKronA", (1120, 40), {"filename_prefix": "my-subject-flux", "trigger_words": "sks dog", "metadata": "",
                                    "float32": False}, {"krona": (trainer, 2)}, size=(320, 200))
    g.add("PreviewImage", (1120, 300), {}, {"images": (trainer, 3)}, title="Loss curve", size=(420, 300))
    prompt = g.add("CLIPTextEncode", (1120, 660), {"text": "a photo of sks dog on a beach"}, {"clip": (clip, 0)}, title="Prompt")
    guided = g.add("FluxGuidance", (1120, 860), {"guidance": 3.5}, {"conditioning": (prompt, 0)}, size=(320, 80))
    latent = g.add("EmptySD3LatentImage", (1120, 990), {"width": 1024, "height": 1024, "batch_size": 1}, size=(320, 110))
    sampler = g.add("KSampler", (1580, 40), FLUX_SAMPLER,
                    {"model": (trainer, 0), "positive": (guided, 0), "negative": (guided, 0), "latent_image": (latent, 0)},
                    size=(320, 270))
    decode = g.add("VAEDecode", (1580, 360), {}, {"samples": (sampler, 0), "vae": (vae, 0)}, size=(320, 60))
    g.add("SaveImage", (1580, 470), {"filename_prefix": "KronA-flux-trained"}, {"images": (decode, 0)}, size=(380, 400))
    return g


WORKFLOWS = {
    "1-krona-txt2img-lora": txt2img,
    "2-krona-controlnet-canny": controlnet,
    "3-train-save-apply-krona": train,
    "4-krona-txt2img-sdxl": sdxl,
    "5-krona-img2img-block-strengths": img2img,
    "6-krona-txt2img-flux": flux,
    "7-train-krona-flux-latents": flux_train,
}


def render() -> dict[Path, str]:
    files = {}
    for name, build in WORKFLOWS.items():
        graph = build()
        files[UI_DIR / f"{name}.json"] = json.dumps(graph.ui(), indent=2) + "\n"
        files[API_DIR / f"{name}.json"] = json.dumps(graph.api, indent=2) + "\n"
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    files = render()
    if args.check:
        stale = [str(p.relative_to(ROOT)) for p, text in files.items() if not p.is_file() or p.read_text() != text]
        if stale:
            print("stale workflow files (run python tools/workflows.py): " + ", ".join(stale))
            return 1
        return 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"wrote {len(files)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
