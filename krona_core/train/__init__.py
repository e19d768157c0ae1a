"""DreamBooth training of KronA adapters: the job every host runs (`job.py`), the loop, data,
objective, checkpoints, sampling, and the diffusers backend for the CLI."""
