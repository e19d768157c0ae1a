"""Module and state-dict naming: kohya adapter names, diffusers ↔ ldm UNet paths, Hugging Face ↔
OpenCLIP text-encoder keys. Pure string functions; which base uses which is `families`'."""
