"""Evaluation: the paper's protocol analogues on the procedural world (`world_metrics.py`), the
paper's CLIP-I / CLIP-T / DINO scores when CLIP / DINO weights are on disk (`clip.py`), and
generation of the images they score (`generate.py`)."""
