"""Run a real Stable Diffusion WebUI Forge checkout headless in a subprocess, for integration tests.

    with ForgeServer(models={"Stable-diffusion": [cached_checkpoint("sd15")],
                             "Lora": [(lokr_file, "ref.safetensors")]},
                     extensions={"ComfyUI-KronA": repo_root}) as srv:
        srv.get_json("/sdapi/v1/sd-models")
        img = srv.txt2img("a photo of sks dog <lora:ref:0.8>")    # numpy uint8 HxWx3

The checkout is named by ``FORGE_PATH`` (or ``forge_path``) and runs in its own interpreter
(``FORGE_PYTHON``, else ``<forge_path>/../forge-venv/bin/python``): Forge pins an old stack
(gradio 4.40, numpy 1.26, transformers 4.46) that cannot share the tests' venv. The checkout is
expected to be prepared already (``repositories/huggingface_guess`` at the commit pinned in
``modules/launch_utils.py``); nothing is installed or cloned at start and the checkout is not
written to, apart from Forge's own ``config_states/`` folder:

* ``--data-dir`` points models/, extensions/, config.json, ui-config.json, cache.json, outputs
  and params.txt at a fresh temporary folder. Extensions are symlinked into
  ``<data>/extensions/<name>`` and model files into ``<data>/models/<folder>/``.
* flags: ``--skip-install --skip-prepare-environment --always-cpu --no-half --api
  --server-name 127.0.0.1 --port <free> --no-download-sd-model --no-hashing --skip-version-check``
  (+ ``--nowebui`` with ``ui=False``), environment ``HF_HUB_OFFLINE=1``. ``--skip-install`` also
  skips extensions' install.py.
* ``PYTHONPYCACHEPREFIX`` keeps ``__pycache__`` folders out of the checkout and of the linked
  extensions. The tests' own ``PYTHONPATH`` is not passed on.
* When the real torchvision does not import in Forge's interpreter (no torchvision build works
  beside torch 2.13), the stand-in ``tests/host_stubs/torchvision`` goes on its ``PYTHONPATH``
  through a folder in the temporary directory that holds only that package: Forge uses the real
  spandrel (it imports fine with the stand-in torchvision), not the spandrel stand-in of
  ``tests/host_stubs``, whose registry raises. With the stand-in, Forge still starts but logs two
  errors of its own: "Error setting up GFPGAN" (facexlib) and "Error loading script:
  controlnet.py" (its built-in ControlNet creates a ``ToTensor()`` at import).
  ``startup_errors(ignore_known=True)`` leaves these out (``KNOWN_HOST_ERRORS``, which also has
  the UI's "Failed reading extension data from Git repository" for a linked extension folder
  whose git repository has no "origin" remote).

Only the standard library, numpy and Pillow are used here.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .host_process import (HOST_STUBS, HostError, HostProcess, HostRequestError, HostStartupError, named_folders, test_cache_dir,
                           torchvision_importable)

__all__ = [
    "ForgeError",
    "ForgeStartupError",
    "ForgeRequestError",
    "ForgeServer",
    "forge_path_from_env",
    "forge_python",
    "KNOWN_HOST_ERRORS",
    "HOST_STUBS",
    "TXT2IMG_DEFAULTS",
]

PathLike = Union[str, os.PathLike]
#: a file to link: a path (keeps its name) or ``(path, name)``
ModelSpec = Union[PathLike, Tuple[PathLike, str]]

#: folders created under <data>/models (Forge's names; "krona" for the KronA extension)
MODEL_FOLDERS = ("Stable-diffusion", "Lora", "krona", "VAE", "ControlNet", "embeddings", "text_encoder")

#: startup-error titles that come from this test host, not from what is under test
KNOWN_HOST_ERRORS = (
    # the torchvision stand-in: facexlib needs torchvision.models._utils; Forge's built-in
    # ControlNet (forge_legacy_preprocessors) calls torchvision.transforms.ToTensor() at import
    "Error setting up GFPGAN",
    "Error loading script: controlnet.py",
    # UI mode reads each extension's git remote; a linked working copy without an "origin"
    # remote (a local repository) makes GitPython raise. Harmless.
    "Failed reading extension data from Git repository",
)

#: the body sent by ``txt2img`` before the caller's overrides
TXT2IMG_DEFAULTS: Dict[str, Any] = {
    "negative_prompt": "",
    "steps": 3,
    "width": 64,
    "height": 64,
    "sampler_name": "Euler",
    "scheduler": "Automatic",
    "seed": 1234,
    "subseed": 0,
    "cfg_scale": 5.0,
    "batch_size": 1,
    "n_iter": 1,
    "send_images": True,
    "save_images": False,
}

_READY_PATH = "/sdapi/v1/sd-models"
#: printed by webui.py after the app-started callbacks (both modes)
_READY_LINE = "Startup time:"
#: webui.py starts the server in a thread; when that thread raises, the process keeps running
_WORKER_DIED = re.compile(r"^Exception in thread .*\(webui_worker\)", re.M)


class ForgeError(HostError):
    """Base class of the errors raised by ForgeServer."""


class ForgeStartupError(ForgeError, HostStartupError):
    """Forge exited or did not answer in time; the message carries the end of its log."""


class ForgeRequestError(ForgeError, HostRequestError):
    """An API call answered with an HTTP error; ``.status`` and ``.body`` as sent."""


def forge_path_from_env() -> Optional[Path]:
    """``$FORGE_PATH`` as a Path, or None when unset/empty."""
    value = os.environ.get("FORGE_PATH", "").strip()
    return Path(value).expanduser().resolve() if value else None


def forge_python(forge_path: PathLike) -> Path:
    """Forge's interpreter: ``$FORGE_PYTHON``, else ``<forge_path>/../forge-venv/bin/python``."""
    value = os.environ.get("FORGE_PYTHON", "").strip()
    if value:
        return Path(value).expanduser()
    guess = Path(forge_path).resolve().parent / "forge-venv" / "bin" / "python"
    if guess.exists():
        return guess
    raise ForgeStartupError(
        f"no Python for Forge: set FORGE_PYTHON (tried {guess}); Forge needs its own venv "
        "(see docs or tests/helpers/forge_server.py)")


def _model_specs(files: Union[Sequence[ModelSpec], Mapping[str, PathLike]]) -> List[Tuple[Path, Optional[str]]]:
    if isinstance(files, Mapping):  # {name: path}
        return [(Path(p), str(n)) for n, p in files.items()]
    out: List[Tuple[Path, Optional[str]]] = []
    for f in files:
        if isinstance(f, tuple):
            out.append((Path(f[0]), str(f[1])))
        else:
            out.append((Path(f), None))
    return out


# Forge's modules/errors.report(): "*** <title>" then indented traceback lines, then "---"
_ERROR_HEAD = re.compile(r"^\*\*\* (.+?)\s*$")


class ForgeServer(HostProcess):
    """A headless Forge subprocess with its own temporary data directory.

    Parameters
    ----------
    forge_path: the Forge checkout (default ``$FORGE_PATH``).
    python: Forge's interpreter (default ``$FORGE_PYTHON``, else ``<forge_path>/../forge-venv/bin/python``).
    extensions: ``{name: folder}`` (or an iterable of folders, named after the folder) symlinked
        into ``<data>/extensions/<name>``.
    models: ``{folder: [file, (file, name), ...]}`` or ``{folder: {name: file}}`` symlinked into
        ``<data>/models/<folder>/``, e.g. ``{"Stable-diffusion": [ckpt], "Lora": [lokr]}``.
        Forge names a network after its file name less the last suffix (``x.krona.safetensors``
        is ``x.krona``) and also answers to its ``ss_output_name`` metadata (its alias).
    ui: True runs the full gradio UI with ``--api``; False adds ``--nowebui`` (API only).
    extra_args: more Forge command-line arguments.
    env: extra environment variables for the subprocess.
    startup_timeout: seconds to wait for ``GET /sdapi/v1/sd-models`` (Forge can take minutes on
        a loaded CPU box).
    keep_dir: do not delete the temporary folder on exit (for debugging).
    torchvision_stub: put the torchvision stand-in on Forge's path (None: when the real one does
        not import in Forge's interpreter).
    """

    host_name = "Forge"
    error_class = ForgeError
    startup_error_class = ForgeStartupError
    request_error_class = ForgeRequestError
    request_timeout = 600.0
    ready_poll_seconds = 0.5

    def __init__(
        self,
        forge_path: Optional[PathLike] = None,
        python: Optional[PathLike] = None,
        extensions: Union[Mapping[str, PathLike], Iterable[PathLike], None] = None,
        models: Optional[Mapping[str, Union[Sequence[ModelSpec], Mapping[str, PathLike]]]] = None,
        ui: bool = True,
        extra_args: Sequence[str] = (),
        env: Optional[Mapping[str, str]] = None,
        startup_timeout: float = 900.0,
        keep_dir: bool = False,
        torchvision_stub: Optional[bool] = None,
    ):
        super().__init__(startup_timeout, keep_dir, env)
        path = Path(forge_path).expanduser().resolve() if forge_path else forge_path_from_env()
        if path is None:
            raise ForgeStartupError("FORGE_PATH not set")
        if not (path / "launch.py").is_file() or not (path / "modules").is_dir():
            raise ForgeStartupError(f"{path} is not a Forge/A1111 checkout (no launch.py, modules/)")
        self.forge_path = path
        self.python = Path(python).expanduser() if python else forge_python(path)
        if not self.python.exists():
            raise ForgeStartupError(f"Forge's Python {self.python} does not exist")
        self.extensions = named_folders(extensions)
        self._initial_models = {str(k): _model_specs(v) for k, v in (models or {}).items()}
        self.ui = ui
        self.extra_args = list(extra_args)
        self.torchvision_stub = torchvision_stub
        self.data_dir: Optional[Path] = None
        self.uses_torchvision_stub: Optional[bool] = None

    # ------------------------------------------------------------------ directories
    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def extensions_dir(self) -> Path:
        return self.data_dir / "extensions"

    def add_extension(self, name: str, src: PathLike) -> Path:
        """Symlink ``src`` as ``<data>/extensions/<name>`` (before start: Forge lists them once)."""
        src = Path(src).resolve()
        if not src.is_dir():
            raise ForgeStartupError(f"extension {src} is not a folder")
        dst = self.extensions_dir / name
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        dst.symlink_to(src, target_is_directory=True)
        return dst

    # ------------------------------------------------------------------ lifecycle
    def _prepare_dirs(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="forge-krona-"))
        self.data_dir = self.root / "data"
        for d in (self.data_dir, self.models_dir, self.extensions_dir):
            d.mkdir(parents=True, exist_ok=True)
        for f in MODEL_FOLDERS:
            self.model_dir(f)
        self._log_path = self.root / "forge.log"
        for folder, specs in self._initial_models.items():
            for src, name in specs:
                self.add_model(folder, src, name)
        for name, src in self.extensions.items():
            self.add_extension(name, src)

    def _build_command(self) -> List[str]:
        cmd = [
            str(self.python), "-u", "launch.py",
            "--skip-install",
            "--skip-prepare-environment",
            "--skip-version-check",
            "--always-cpu",
            "--no-half",
            "--api",
            "--server-name", self.host,
            "--port", str(self.port),
            "--no-download-sd-model",
            "--no-hashing",
            "--data-dir", str(self.data_dir),
        ]
        if not self.ui:
            cmd.append("--nowebui")
        return cmd + self.extra_args

    def _build_env(self) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env.update({
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "DO_NOT_TRACK": "1",
            "GRADIO_ANALYTICS_ENABLED": "False",
            "PYTHONUNBUFFERED": "1",
            "PYTHONIOENCODING": "utf-8",
            "PATH": str(self.python.parent) + os.pathsep + env.get("PATH", ""),
        })
        env.setdefault("PYTHONPYCACHEPREFIX", str(test_cache_dir() / "pycache-forge"))
        use_stub = self.torchvision_stub
        if use_stub is None:
            use_stub = not torchvision_importable(self.python)
        self.uses_torchvision_stub = bool(use_stub)
        if use_stub:
            # only torchvision: the spandrel stand-in beside it would break Forge's upscalers
            stubs = self.root / "stubs"
            stubs.mkdir(exist_ok=True)
            (stubs / "torchvision").symlink_to(HOST_STUBS / "torchvision", target_is_directory=True)
            env["PYTHONPATH"] = str(stubs)
        env.update(self.extra_env)
        return env

    def _prepare(self) -> Dict[str, str]:
        self._prepare_dirs()
        return self._build_env()

    def _cwd(self) -> Path:
        return self.forge_path

    def _ready(self) -> bool:
        """``GET /sdapi/v1/sd-models`` answers 200 and the log has the "Startup time:" line.

        In UI mode Forge adds the API routes after gradio is up and runs the app-started
        callbacks (which add extensions' routes, e.g. ``/sdapi/v1/loras``) after that; the line
        is printed once they have run.
        """
        if _WORKER_DIED.search(self.log_text()):  # the process lives on, but nothing will ever answer
            raise ForgeStartupError(f"Forge's web server thread failed before it was ready\n{self.log_tail()}")
        with urllib.request.urlopen(self.url + _READY_PATH, timeout=30) as r:
            r.read()
            return r.status == 200 and _READY_LINE in self.log_text()

    # ------------------------------------------------------------------ logs
    def startup_errors(self, ignore_known: bool = False) -> List[Tuple[str, str]]:
        """Forge's reported errors: ``(title, block)`` for each ``*** <title>`` block in the log.

        Forge reports failures of scripts, extensions and callbacks this way (the block holds
        the indented traceback). ``ignore_known`` drops ``KNOWN_HOST_ERRORS``.
        """
        out: List[Tuple[str, str]] = []
        lines = self.log_text().splitlines()
        i = 0
        while i < len(lines):
            m = _ERROR_HEAD.match(lines[i])
            if not m:
                i += 1
                continue
            title, block = m.group(1), [lines[i]]
            i += 1
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                block.append(lines[i])
                i += 1
            if ignore_known and any(title.startswith(k) for k in KNOWN_HOST_ERRORS):
                continue
            out.append((title, "\n".join(block).rstrip()))
        return out

    def extension_errors(self, name: str, ignore_known: bool = True) -> List[Tuple[str, str]]:
        """The ``startup_errors`` whose title or traceback mention extension ``name`` or its folder."""
        needles = [name, str(self.extensions_dir / name)]
        if name in self.extensions:
            needles.append(str(self.extensions[name]))
        return [(t, b) for t, b in self.startup_errors(ignore_known)
                if any(s in t or s in b for s in needles)]

    # ------------------------------------------------------------------ HTTP
    def refresh_loras(self) -> None:
        """``POST /sdapi/v1/refresh-loras`` (after ``add_model("Lora", ...)``)."""
        self.post_json("/sdapi/v1/refresh-loras")

    def refresh_checkpoints(self) -> None:
        self.post_json("/sdapi/v1/refresh-checkpoints")

    # ------------------------------------------------------------------ generation
    def txt2img_raw(self, prompt: str, timeout: float = 900.0, **overrides: Any) -> Dict[str, Any]:
        """``POST /sdapi/v1/txt2img`` with ``TXT2IMG_DEFAULTS`` + overrides; the JSON answer
        (``images`` base64 PNGs, ``parameters``, ``info`` as a JSON string)."""
        body = dict(TXT2IMG_DEFAULTS)
        body["prompt"] = prompt
        body.update(overrides)
        return self.post_json("/sdapi/v1/txt2img", body, timeout=timeout)

    @staticmethod
    def decode_image(b64: str) -> np.ndarray:
        """A base64 PNG (optionally a data URL) as a uint8 array (H, W, C)."""
        from PIL import Image

        if b64.startswith("data:"):
            b64 = b64.split(",", 1)[1]
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            im.load()
            if im.mode not in ("RGB", "RGBA", "L"):
                im = im.convert("RGB")
            return np.array(im, dtype=np.uint8)

    def txt2img_images(self, prompt: str, **overrides: Any) -> Tuple[List[np.ndarray], Dict[str, Any]]:
        """All images of a txt2img call, and its ``info`` (parsed)."""
        resp = self.txt2img_raw(prompt, **overrides)
        images = [self.decode_image(s) for s in resp.get("images") or []]
        info = resp.get("info")
        if isinstance(info, str):
            try:
                info = json.loads(info)
            except ValueError:
                info = {"raw": info}
        return images, info or {}

    def txt2img(self, prompt: str, **overrides: Any) -> np.ndarray:
        """The first image of ``POST /sdapi/v1/txt2img`` as uint8 (H, W, 3).

        Defaults: ``TXT2IMG_DEFAULTS`` (64x64, 3 steps, Euler, seed 1234, cfg 5); any API field
        can be overridden, e.g. ``txt2img(p, seed=7, steps=4)``.
        """
        images, _info = self.txt2img_images(prompt, **overrides)
        if not images:
            raise ForgeError(f"txt2img returned no image\n{self.log_tail(3000)}")
        return images[0]
