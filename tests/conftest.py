"""Shared fixtures: tiny seeded models built in the tests (never downloaded)."""

from __future__ import annotations

import json
import os
from pathlib import Path

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


@pytest.fixture
def two_krona_files(tmp_path):
    """Two seeded SD1 files for merging: "one" (the attn preset, trigger sks, a training record) and
    "two" (attn1.to_q only, triggers ohwx and sks), as loaded KronAFiles."""
    import krona_core

    unet = make_unet("sd1")
    h1 = krona_core.attach(unet, a1=4, a2=2, seed=1)
    randomize(h1, seed=1)
    h2 = krona_core.attach(unet, a1=4, a2=2, targets=["*attn1.to_q"], seed=2)
    randomize(h2, seed=2)
    one = h1.save(tmp_path / "one.krona.safetensors", dtype=torch.float32, trigger_words=["sks"],
                  training={"steps": 500, "seed": 0})
    two = h2.save(tmp_path / "two.krona.safetensors", dtype=torch.float32, trigger_words=["ohwx", "sks"])
    h1.remove()
    h2.remove()
    return krona_core.load(one), krona_core.load(two)


@pytest.fixture(params=["sd1", "sd2", "sdxl"])
def base(request) -> str:
    return request.param


# ---------------------------------------------------------------------------------- shared ComfyUI
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def comfy_server():
    """One headless ComfyUI (COMFYUI_PATH) with the pack, shared by the test modules that load the pack
    (a start takes about 30 s on 2 cores). Each module adds the files it needs after start, under names
    of its own; the workflow and browser tests share ``example_server``. It serves the real frontend
    when comfyui-frontend-package is installed: the browser test needs it, the API tests do not mind.
    The smoke tests of the helpers (test_host_comfy_smoke.py) keep their own server, without the pack.
    The test-only probe pack (tests/helpers/probe_pack) lets tests look at the shared model's state."""
    from helpers.comfy_server import ComfyServer, comfyui_path_from_env, frontend_package_root

    packs = {"ComfyUI-KronA": ROOT, "krona-test-probe": ROOT / "tests" / "helpers" / "probe_pack"}
    with ComfyServer(comfyui_path_from_env(), custom_nodes=packs,
                     frontend_root=frontend_package_root()) as srv:
        yield srv


@pytest.fixture(scope="session")
def example_server(comfy_server, tmp_path_factory):
    """``comfy_server`` with the tiny stand-ins of the files the example workflows name."""
    from helpers.example_models import add_example_models

    add_example_models(comfy_server, tmp_path_factory.mktemp("example-models"))
    return comfy_server


# ---------------------------------------------------------------------------------- host tests
# Tests marked `comfy` run a real ComfyUI (COMFYUI_PATH), `forge` a real Forge (FORGE_PATH), `browser`
# the real ComfyUI frontend in Chromium. Without their host they skip, and the summary says how to run
# them. With KRONA_REQUIRE_HOSTS=1 (CI) any skip that is not about a missing GPU fails the run.
# Items run by phase (host-free, Forge, ComfyUI, browser; file order kept within each) so that each
# phase's time is its own, and the shared ComfyUI server (session-scoped) serves the last two phases.

PHASES = ("host-free", "Forge", "ComfyUI", "browser")
HOST_VARIABLES = {"comfy": "COMFYUI_PATH", "forge": "FORGE_PATH", "browser": "COMFYUI_PATH"}
HOW_TO_RUN_HOSTS = """\
To run them: `make test-hosts` (sets up both hosts from ../shared/hosts: tools/setup_hosts.sh), or by hand
  COMFYUI_PATH=<ComfyUI checkout>  with `.venv/bin/pip install -r requirements-comfy-test.txt` (ComfyUI's deps);
  browser test: also the Debian package chromium and comfyui-frontend-package==<the pin in ComfyUI's requirements.txt>
  FORGE_PATH=<Forge checkout>      with its own venv at FORGE_PYTHON (default <FORGE_PATH>/../forge-venv/bin/python)
See README.md, "Tests"."""
GPU_SKIP = ("gpu", "cuda")  # the only skips CI accepts (KRONA_REQUIRE_HOSTS=1)


def _unset(variable: str) -> bool:
    return not os.environ.get(variable, "").strip()


def phase_of(item) -> str:
    if item.get_closest_marker("browser"):
        return "browser"
    if item.get_closest_marker("forge"):
        return "Forge"
    if item.get_closest_marker("comfy"):
        return "ComfyUI"
    return "host-free"


def pytest_collection_modifyitems(config, items):
    for item in items:
        for marker, variable in HOST_VARIABLES.items():
            if item.get_closest_marker(marker) and _unset(variable):
                item.add_marker(pytest.mark.skip(reason=f"{variable} not set (host test; see the summary)"))
                break
    items.sort(key=lambda item: PHASES.index(phase_of(item)))  # stable: file order within a phase


class _Tally:
    def __init__(self):
        self.phase: dict[str, str] = {}  # nodeid -> phase
        self.seconds = {p: 0.0 for p in PHASES}
        self.outcome: dict[str, str] = {}  # nodeid -> passed / failed / skipped
        self.skips: dict[str, str] = {}  # nodeid -> reason

    def counts(self, phase: str) -> dict[str, int]:
        out = {"passed": 0, "failed": 0, "skipped": 0}
        for nodeid, outcome in self.outcome.items():
            if self.phase.get(nodeid, "host-free") == phase:
                out[outcome] += 1
        return out


_tally = _Tally()


def pytest_collection_finish(session):
    _tally.phase = {item.nodeid: phase_of(item) for item in session.items}


def pytest_runtest_logreport(report):
    _tally.seconds[_tally.phase.get(report.nodeid, "host-free")] += report.duration  # fixtures included
    if report.failed:
        _tally.outcome[report.nodeid] = "failed"
    elif _tally.outcome.get(report.nodeid) == "failed":
        pass
    elif report.skipped:
        _tally.outcome[report.nodeid] = "skipped"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _tally.skips[report.nodeid] = reason.removeprefix("Skipped: ")
    elif report.when == "call":
        _tally.outcome[report.nodeid] = "passed"


def _disallowed_skips() -> list[tuple[str, str]]:
    if os.environ.get("KRONA_REQUIRE_HOSTS", "") in ("", "0"):
        return []
    return [(n, r) for n, r in _tally.skips.items() if not any(w in r.lower() for w in GPU_SKIP)]


@pytest.hookimpl(wrapper=True, tryfirst=True)  # outermost: after pytest's short test summary
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    yield
    if config.option.collectonly:
        return
    tr = terminalreporter
    tr.write_sep("-", "time by phase (setup + call + teardown)")
    for phase in PHASES:
        c = _tally.counts(phase)
        if not any(c.values()):
            continue
        tr.write_line(f"{phase:>10}: {_tally.seconds[phase]:7.1f} s   {c['passed']} passed, {c['failed']} failed, "
                      f"{c['skipped']} skipped")
    host_skips = [(n, r) for n, r in _tally.skips.items() if _tally.phase.get(n, "host-free") != "host-free"]
    if host_skips:
        unset = sorted({v for v in HOST_VARIABLES.values() if _unset(v)})
        tr.write_sep("-", f"{len(host_skips)} host tests skipped")
        if unset:
            tr.write_line(f"{' and '.join(unset)} not set.")
        tr.write_line(HOW_TO_RUN_HOSTS)
    bad = _disallowed_skips()
    if bad:
        tr.write_sep("!", f"KRONA_REQUIRE_HOSTS: {len(bad)} tests skipped for a reason other than a missing GPU")
        for nodeid, reason in bad:
            tr.write_line(f"{nodeid}: {reason}")
    report = os.environ.get("KRONA_PHASE_REPORT")
    if report:
        data = {"phases": {p: {"seconds": round(_tally.seconds[p], 1), **_tally.counts(p)} for p in PHASES},
                "disallowed_skips": len(bad)}
        with open(report, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)


def pytest_sessionfinish(session, exitstatus):
    if session.config.option.collectonly:
        return
    passed = list(_tally.outcome.values()).count("passed")
    # a run in which nothing passed (all skipped / deselected) must not look green
    if exitstatus == 0 and passed == 0:
        session.exitstatus = 5
    if exitstatus == 0 and _disallowed_skips():
        session.exitstatus = 1
