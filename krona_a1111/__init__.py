"""The A1111 / Forge face of ComfyUI-KronA: prompt alias, extra-networks page, KronA tab, API.

Thin by design: every computation is krona_core's; this package only talks to the web UI.
"""
