"""The KronA tab: train on the loaded checkpoint (progress, loss chart, cancel), inspect, convert."""

from __future__ import annotations

import gradio as gr

from krona_core.adapters.targets import PRESETS

from . import backend
from .requests import ConvertRequest, TrainRequest, parse_request
from .networks import krona_files


def _train(images_dir, instance_prompt, name, steps, lr, a1, a2, targets, seed, resolution, grad_accum, class_prompt,
           num_class_images, train_text_encoder, trigger_words, tokenizer_dir, progress=gr.Progress()):
    def on_step(step: int, loss: float) -> None:
        total = backend.CURRENT.total or step
        progress(step / total, desc=f"step {step}/{total} · loss {loss:.4f}")

    fields = dict(images_dir=images_dir, instance_prompt=instance_prompt, name=name, steps=steps, learning_rate=lr,
                  a1=a1, a2=a2, targets=targets, seed=seed, resolution=resolution, grad_accum=grad_accum,
                  class_prompt=class_prompt, num_class_images=num_class_images,
                  train_text_encoder=bool(train_text_encoder), trigger_words=trigger_words, tokenizer_dir=tokenizer_dir)
    try:
        result = backend.train(parse_request(TrainRequest, fields), on_step)
    except (ValueError, OSError, backend.JobBusy) as exc:
        return f"**Error:** {exc}", None
    if result["cancelled"]:
        return f"Cancelled; checkpoint kept: `{result['checkpoint']}`", None
    return f"Saved `{result['path']}` — use `{result['tag']}` in a prompt.", result["loss_curve"]


def _inspect(name):
    try:
        return backend.inspect(name)
    except Exception as exc:  # shown in the textbox, the UI keeps working
        return f"Error: {exc}"


def _convert(src, dst, to, a1, a2, budget, rank):
    try:
        fields = dict(src=src, dst=dst, to=to or "", a1=a1, a2=a2, budget=budget, rank=rank)
        return backend.convert(parse_request(ConvertRequest, fields))
    except (ValueError, OSError) as exc:  # refused input: the reason, the UI keeps working
        return f"Error: {exc}"


def on_ui_tabs():
    with gr.Blocks(analytics_enabled=False) as tab:
        with gr.Tab("Train"):
            gr.Markdown("DreamBooth-train a KronA adapter on the **currently loaded checkpoint** (paper defaults: "
                        "(64, 8) factors on attention, lr 1e-3, batch 1 × accumulation 4, 500 steps). "
                        "The result goes to `models/krona/` and is used as `<krona:name:1>`.")
            with gr.Row():
                images_dir = gr.Textbox(label="Folder of instance images (name.txt captions optional)")
                instance_prompt = gr.Textbox(label="Instance prompt", value="a photo of sks person")
                name = gr.Textbox(label="Name", value="krona")
            with gr.Row():
                steps = gr.Number(label="Steps (0 = the model's default: 500, SDXL 1000)", value=0, precision=0)
                lr = gr.Number(label="Learning rate", value=1e-3)
                a1 = gr.Number(label="a1", value=64, precision=0)
                a2 = gr.Number(label="a2", value=8, precision=0)
                targets = gr.Dropdown(label="Targets", choices=list(PRESETS), value="attn")
                seed = gr.Number(label="Seed", value=0, precision=0)
            with gr.Row():
                resolution = gr.Number(label="Resolution (0 = the model's default: 512, SDXL 1024)", value=0, precision=0)
                grad_accum = gr.Number(label="Gradient accumulation", value=4, precision=0)
                class_prompt = gr.Textbox(label="Class prompt (prior preservation)")
                num_class_images = gr.Number(label="Class images to generate", value=0, precision=0)
                train_text_encoder = gr.Checkbox(label="Train text encoder", value=False)
            with gr.Row():
                trigger_words = gr.Textbox(label="Trigger words (default: the instance prompt)")
                tokenizer_dir = gr.Textbox(label="Tokenizer folder (found automatically in Forge)")
            with gr.Row():
                start = gr.Button("Train", variant="primary")
                cancel = gr.Button("Cancel (keeps a checkpoint)")
            status = gr.Markdown()
            curve = gr.Image(label="Loss curve", type="filepath")
            start.click(_train, [images_dir, instance_prompt, name, steps, lr, a1, a2, targets, seed, resolution, grad_accum,
                                 class_prompt, num_class_images, train_text_encoder, trigger_words, tokenizer_dir],
                        [status, curve])
            cancel.click(lambda: backend.CURRENT.cancel.set(), None, None)
        with gr.Tab("Inspect"):
            files = gr.Dropdown(label="KronA file", choices=sorted(krona_files()))
            refresh = gr.Button("Refresh list")
            info = gr.Textbox(label="Metadata and layers", lines=24)
            refresh.click(lambda: gr.update(choices=sorted(krona_files())), None, files)
            files.change(_inspect, files, info)
        with gr.Tab("Convert"):
            gr.Markdown("LoRA / LyCORIS LoKr / official DiffuseKronA → KronA (or KronA → LoRA); "
                        "relative output names land in `models/krona/`.")
            with gr.Row():
                src = gr.Textbox(label="Source file")
                dst = gr.Textbox(label="Output file (name.krona.safetensors)")
                to = gr.Dropdown(label="To", choices=["", "krona", "lora", "diff"], value="")
            with gr.Row():
                c_a1 = gr.Number(label="a1", value=64, precision=0)
                c_a2 = gr.Number(label="a2", value=8, precision=0)
                budget = gr.Number(label="Parameter budget (0 = use a1/a2)", value=0, precision=0)
                rank = gr.Number(label="LoRA rank (0 = exact)", value=0, precision=0)
            run = gr.Button("Convert")
            report = gr.Textbox(label="Report", lines=10)
            run.click(_convert, [src, dst, to, c_a1, c_a2, budget, rank], report)
    return [(tab, "KronA", "krona_tab")]
