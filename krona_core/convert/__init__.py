"""Conversions: LyCORIS LoKr, kohya / ComfyUI / PEFT LoRA, LyCORIS full and official DiffuseKronA
files ↔ KronA, KronA → LoRA, merging files and baking them into checkpoints."""
