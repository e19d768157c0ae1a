"""Run a real ComfyUI checkout headless in a subprocess, for integration tests.

    with ComfyServer(custom_nodes={"ComfyUI-KronA": repo_root}) as srv:
        srv.add_model("checkpoints", cached_checkpoint("sd15"))
        history = srv.run(api_graph)            # queue + wait, raising with ComfyUI's errors
        [img] = srv.images(history)             # numpy uint8 HxWx3

The checkout is named by ``COMFYUI_PATH`` (or the ``comfyui_path`` argument) and is never
written to:

* ``--base-directory`` (ComfyUI >= 0.3.2x) points models/, custom_nodes/, input/, output/,
  temp/ and user/ at a fresh temporary folder; on older checkouts without that flag the helper
  falls back to ``--output/--input/--temp/--user-directory`` plus an
  ``--extra-model-paths-config`` yaml for the model folders. Custom node packs are symlinked
  into ``<base>/custom_nodes/<name>`` (on the fallback path, which cannot move custom_nodes,
  each is symlinked into ``<COMFYUI_PATH>/custom_nodes`` under a unique name and removed on
  exit).
* ``--database-url`` puts ComfyUI's sqlite file into ``<base>/user`` (its default lives in the
  checkout), ``PYTHONPYCACHEPREFIX`` keeps ``__pycache__`` folders out of the checkout and out
  of the packs under test, and ``--front-end-root`` serves a one-file placeholder frontend (the
  ``comfyui-frontend-package`` is only needed by browser tests).
* The subprocess runs with the tests' interpreter (``sys.executable``), ``--cpu``, on
  127.0.0.1 with a free port, offline (``HF_HUB_OFFLINE=1``). When the real torchvision does
  not import in that interpreter, ``tests/host_stubs`` (a stand-in torchvision) goes first on
  its ``PYTHONPATH``.

Only the standard library, numpy and Pillow are used here.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

from .host_process import HOST_STUBS, HostError, HostProcess, HostRequestError, named_folders, test_cache_dir, torchvision_importable

__all__ = [
    "ComfyError",
    "ComfyStartupError",
    "ComfyPromptError",
    "ComfyExecutionError",
    "ComfyServer",
    "comfyui_path_from_env",
    "frontend_package_root",
    "torchvision_importable",
    "txt2img_graph",
    "HOST_STUBS",
]

PathLike = Union[str, os.PathLike]

#: model folders created under <base>/models (and mapped in the fallback yaml)
MODEL_FOLDERS = (
    "checkpoints", "loras", "controlnet", "krona", "vae", "clip", "text_encoders",
    "diffusion_models", "unet", "embeddings", "upscale_models", "clip_vision",
)


class ComfyError(HostError):
    """Base class of the errors raised by ComfyServer."""


class ComfyStartupError(ComfyError):
    """ComfyUI exited or did not answer in time; the message carries the end of its log."""


class ComfyRequestError(ComfyError, HostRequestError):
    """An HTTP call answered with an error; ``.status`` and ``.body`` as sent."""


class ComfyPromptError(ComfyError):
    """``POST /prompt`` refused the graph (validation); ``.error`` and ``.node_errors`` as sent."""

    def __init__(self, message: str, error: Any = None, node_errors: Any = None, prompt_id: Optional[str] = None):
        super().__init__(message)
        self.error = error
        self.node_errors = node_errors or {}
        #: set when ComfyUI queued the prompt anyway (some output branches were dropped)
        self.prompt_id = prompt_id


class ComfyExecutionError(ComfyError):
    """The prompt ran and failed (or was interrupted); ``.messages`` are ComfyUI's status messages."""

    def __init__(self, message: str, prompt_id: str = "", messages: Any = None, history: Any = None):
        super().__init__(message)
        self.prompt_id = prompt_id
        self.messages = messages or []
        self.history = history


def comfyui_path_from_env() -> Optional[Path]:
    """``$COMFYUI_PATH`` as a Path, or None when unset/empty."""
    value = os.environ.get("COMFYUI_PATH", "").strip()
    return Path(value).expanduser().resolve() if value else None


def frontend_package_root() -> Optional[Path]:
    """The real frontend (``comfyui-frontend-package``'s static folder) for ``frontend_root``; None when
    the package is not installed."""
    try:
        import comfyui_frontend_package
    except ImportError:
        return None
    return Path(comfyui_frontend_package.__file__).parent / "static"


def _format_node_errors(node_errors: Mapping[str, Any]) -> List[str]:
    lines = []
    for node_id, info in (node_errors or {}).items():
        class_type = info.get("class_type", "?") if isinstance(info, dict) else "?"
        errors = info.get("errors", []) if isinstance(info, dict) else [info]
        for e in errors:
            if isinstance(e, dict):
                lines.append(f"  node {node_id} ({class_type}): {e.get('type', '')}: {e.get('message', '')}"
                             f"{' - ' + str(e.get('details')) if e.get('details') else ''}")
            else:
                lines.append(f"  node {node_id} ({class_type}): {e}")
    return lines


class ComfyServer(HostProcess):
    """A headless ComfyUI subprocess with its own temporary base directory.

    Parameters
    ----------
    comfyui_path: the ComfyUI checkout (default ``$COMFYUI_PATH``).
    custom_nodes: custom node packs to load: a mapping ``{name: folder}`` or an iterable of
        folders (named after the folder). Use a pack's real name (e.g. "ComfyUI-KronA"): it
        becomes the folder name ComfyUI sees, hence the ``/extensions/<name>`` web path.
    models: files to make visible before start, ``{folder: [file, ...]}`` (symlinked), e.g.
        ``{"checkpoints": [cached_checkpoint("sd15")]}``; see also ``add_model``.
    extra_model_paths: extra ``{folder: [dir, ...]}`` written to an extra_model_paths.yaml and
        passed with ``--extra-model-paths-config`` (as a user's own config would be).
    extra_args: more ComfyUI command-line arguments.
    env: extra environment variables for the subprocess.
    startup_timeout: seconds to wait for ``GET /object_info`` to answer.
    keep_dir: do not delete the temporary base directory on exit (for debugging).
    """

    host_name = "ComfyUI"
    error_class = ComfyError
    startup_error_class = ComfyStartupError
    request_error_class = ComfyRequestError
    # ComfyUI handles Ctrl-C (KeyboardInterrupt -> cleanup); then TERM, then KILL
    stop_signals = ((signal.SIGINT, 15), (signal.SIGTERM, 10), (signal.SIGKILL, 10))

    def __init__(
        self,
        comfyui_path: Optional[PathLike] = None,
        custom_nodes: Union[Mapping[str, PathLike], Iterable[PathLike], None] = None,
        models: Optional[Mapping[str, Sequence[PathLike]]] = None,
        extra_model_paths: Optional[Mapping[str, Sequence[PathLike]]] = None,
        extra_args: Sequence[str] = (),
        env: Optional[Mapping[str, str]] = None,
        startup_timeout: float = 300.0,
        keep_dir: bool = False,
        python: str = sys.executable,
        disable_api_nodes: bool = True,
        frontend_root: Optional[PathLike] = None,
    ):
        super().__init__(startup_timeout, keep_dir, env)
        path = Path(comfyui_path).expanduser().resolve() if comfyui_path else comfyui_path_from_env()
        if path is None:
            raise ComfyStartupError("COMFYUI_PATH not set")
        if not (path / "main.py").is_file():
            raise ComfyStartupError(f"{path} is not a ComfyUI checkout (no main.py)")
        self.comfyui_path = path
        self.custom_nodes = named_folders(custom_nodes)
        self._initial_models = {k: list(v) for k, v in (models or {}).items()}
        self._extra_model_paths = {k: [Path(p) for p in v] for k, v in (extra_model_paths or {}).items()}
        self.extra_args = list(extra_args)
        self.python = python
        self.disable_api_nodes = disable_api_nodes
        self.frontend_root = Path(frontend_root) if frontend_root else None  # a real frontend (browser tests)

        self.client_id = uuid.uuid4().hex
        self.base_dir: Optional[Path] = None
        self.uses_base_directory: Optional[bool] = None
        self.uses_torchvision_stub: Optional[bool] = None
        self._checkout_links: List[Path] = []

    # ------------------------------------------------------------------ directories
    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def user_dir(self) -> Path:
        return self.base_dir / "user"

    @property
    def temp_dir(self) -> Path:
        return self.base_dir / "temp"

    @property
    def custom_nodes_dir(self) -> Path:
        return self.base_dir / "custom_nodes"

    def add_input(self, src: PathLike, name: Optional[str] = None) -> str:
        """Copy a file into ComfyUI's input folder (for LoadImage); returns its name."""
        src = Path(src)
        name = name or src.name
        shutil.copyfile(src, self.input_dir / name)
        return name

    # ------------------------------------------------------------------ lifecycle
    def _supports_base_directory(self) -> bool:
        cli = self.comfyui_path / "comfy" / "cli_args.py"
        try:
            return "--base-directory" in cli.read_text(encoding="utf-8")
        except OSError:
            return False

    def _prepare_dirs(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="comfyui-krona-"))
        self.base_dir = self.root / "base"
        for d in (self.base_dir, self.models_dir, self.output_dir, self.input_dir, self.user_dir,
                  self.temp_dir, self.custom_nodes_dir):
            d.mkdir(parents=True, exist_ok=True)
        for f in MODEL_FOLDERS:
            self.model_dir(f)
        fe = self.root / "frontend"
        fe.mkdir()
        (fe / "index.html").write_text(
            "<!doctype html><title>ComfyUI (headless test)</title><p>headless test frontend</p>\n",
            encoding="utf-8")
        self._log_path = self.root / "comfyui.log"
        for folder, files in self._initial_models.items():
            for f in files:
                self.add_model(folder, f)

    def _write_yaml(self, name: str, sections: Mapping[str, Mapping[str, Sequence[Path]]]) -> Path:
        # tiny YAML writer (block scalars), enough for extra_model_paths.yaml
        lines = []
        for section, folders in sections.items():
            lines.append(f"{section}:")
            for folder, paths in folders.items():
                lines.append(f"    {folder}: |")
                for p in paths:
                    lines.append(f"        {Path(p).resolve()}")
        path = self.root / name
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def _link_custom_nodes(self) -> None:
        for name, src in self.custom_nodes.items():
            if not (src / "__init__.py").is_file() and not src.is_file():
                raise ComfyStartupError(f"custom node pack {src} has no __init__.py")
            if self.uses_base_directory:
                (self.custom_nodes_dir / name).symlink_to(src, target_is_directory=src.is_dir())
            else:
                # no way to move custom_nodes on this ComfyUI: a uniquely named link in the
                # checkout, removed in stop()
                link = self.comfyui_path / "custom_nodes" / f"{name}__krona_test_{uuid.uuid4().hex[:8]}"
                link.symlink_to(src, target_is_directory=src.is_dir())
                self._checkout_links.append(link)

    def _build_command(self) -> List[str]:
        cmd = [
            self.python, "-u", str(self.comfyui_path / "main.py"),
            "--cpu",
            "--listen", self.host,
            "--port", str(self.port),
            "--disable-auto-launch",
            "--preview-method", "none",
            "--front-end-root", str(self.frontend_root or self.root / "frontend"),
            "--database-url", f"sqlite:///{self.user_dir / 'comfyui.db'}",
        ]
        if self.disable_api_nodes:
            cmd.append("--disable-api-nodes")
        extra_sections: Dict[str, Dict[str, Sequence[Path]]] = {}
        if self.uses_base_directory:
            cmd += ["--base-directory", str(self.base_dir)]
        else:
            cmd += [
                "--output-directory", str(self.output_dir),
                "--input-directory", str(self.input_dir),
                "--temp-directory", str(self.base_dir),  # ComfyUI appends "temp"
                "--user-directory", str(self.user_dir),
            ]
            extra_sections["krona_test_base"] = {f: [self.models_dir / f] for f in MODEL_FOLDERS}
        if self._extra_model_paths:
            extra_sections["krona_test_extra"] = self._extra_model_paths
        if extra_sections:
            cmd += ["--extra-model-paths-config", str(self._write_yaml("extra_model_paths.yaml", extra_sections))]
        return cmd + self.extra_args

    def _build_env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env.update({
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1",
            "PYTHONIOENCODING": "utf-8",
        })
        env.setdefault("PYTHONPYCACHEPREFIX", str(test_cache_dir() / "pycache"))
        self.uses_torchvision_stub = not torchvision_importable(self.python)
        if self.uses_torchvision_stub:
            old = env.get("PYTHONPATH", "")
            env["PYTHONPATH"] = str(HOST_STUBS) + (os.pathsep + old if old else "")
        env.update(self.extra_env)
        return env

    def _prepare(self) -> Dict[str, str]:
        self._prepare_dirs()
        self.uses_base_directory = self._supports_base_directory()
        self._link_custom_nodes()
        return self._build_env()

    def _cwd(self) -> Path:
        return self.root

    def _ready(self) -> bool:
        with urllib.request.urlopen(self.url + "/object_info", timeout=30) as r:
            r.read()
            return r.status == 200

    def _remove_links(self) -> None:
        for link in self._checkout_links:
            try:
                if link.is_symlink():
                    link.unlink()
            except OSError:
                pass
        self._checkout_links = []

    # ------------------------------------------------------------------ logs
    def import_failures(self) -> List[str]:
        """Custom-node / built-in modules that ComfyUI reported as "IMPORT FAILED"."""
        out = []
        for line in self.log_text().splitlines():
            if "(IMPORT FAILED)" in line:
                out.append(line.split("(IMPORT FAILED):", 1)[-1].strip())
            elif line.startswith("IMPORT FAILED:"):
                out.append(line.split(":", 1)[1].strip())
        return out

    def custom_node_import_failures(self) -> List[str]:
        """Names (keys of ``custom_nodes``) of the linked packs ComfyUI failed to import.

        The traceback is in ``log_text()`` ("Cannot import ... module for custom nodes").
        """
        failed = []
        for f in self.import_failures():
            base = os.path.basename(f.rstrip("/\\"))
            for name in self.custom_nodes:
                if base == name or base.startswith(name + "__krona_test_"):
                    failed.append(name)
        return failed

    # ------------------------------------------------------------------ HTTP
    def object_info(self, node_class: Optional[str] = None) -> Dict[str, Any]:
        """``GET /object_info`` (all nodes) or ``/object_info/<node_class>`` (that node's entry)."""
        if node_class is None:
            return self.get_json("/object_info")
        info = self.get_json("/object_info/" + urllib.parse.quote(node_class))
        if node_class not in info:
            raise KeyError(f"ComfyUI has no node {node_class!r}")
        return info[node_class]

    def system_stats(self) -> Dict[str, Any]:
        return self.get_json("/system_stats")

    def queue(self, prompt: Mapping[str, Any], extra_data: Optional[Mapping[str, Any]] = None) -> str:
        """``POST /prompt``; returns the prompt id or raises ComfyPromptError with node_errors."""
        payload: Dict[str, Any] = {"prompt": prompt, "client_id": self.client_id}
        if extra_data:
            payload["extra_data"] = dict(extra_data)
        try:
            resp = self.post_json("/prompt", payload)
        except ComfyRequestError as e:
            body = e.body
            if not isinstance(body, dict):
                raise ComfyPromptError(f"POST /prompt failed: HTTP {e.status}: {str(body)[:2000]}") from None
            error = body.get("error")
            node_errors = body.get("node_errors") or {}
            if isinstance(error, dict):
                head = f"{error.get('type', '')}: {error.get('message', '')}"
                if error.get("details"):
                    head += f" ({error['details']})"
            else:
                head = str(error)
            msg = "\n".join([f"ComfyUI refused the prompt: {head}"] + _format_node_errors(node_errors))
            raise ComfyPromptError(msg, error=error, node_errors=node_errors) from None
        node_errors = resp.get("node_errors") or {}
        if node_errors:  # queued, but the output branches with errors were dropped
            raise ComfyPromptError(
                "\n".join([f"ComfyUI queued prompt {resp.get('prompt_id')} without the branches that have errors:"]
                          + _format_node_errors(node_errors)),
                node_errors=node_errors, prompt_id=resp.get("prompt_id"))
        return resp["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600.0, poll: float = 0.2) -> Dict[str, Any]:
        """Wait for ``prompt_id`` to finish; returns its ``/history`` entry.

        Raises ComfyExecutionError with ComfyUI's exception message, node and traceback when
        it failed or was interrupted, and ComfyError on timeout or when the server died.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                hist = self.get_json("/history/" + urllib.parse.quote(prompt_id))
            except (urllib.error.URLError, ConnectionError, OSError):
                hist = {}
            entry = hist.get(prompt_id)
            if entry:
                status = entry.get("status") or {}
                if status.get("status_str") == "error" or not status.get("completed", True):
                    raise ComfyExecutionError(self._describe_failure(prompt_id, status), prompt_id,
                                              status.get("messages"), entry)
                return entry
            if not self.running:
                raise ComfyError(f"ComfyUI exited while running prompt {prompt_id}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ComfyError(f"prompt {prompt_id} did not finish within {timeout:.0f}s\n{self.log_tail()}")
            time.sleep(poll)

    def _describe_failure(self, prompt_id: str, status: Mapping[str, Any]) -> str:
        lines = [f"ComfyUI prompt {prompt_id} failed ({status.get('status_str')})"]
        for event, data in status.get("messages") or []:
            if event == "execution_error":
                lines.append(f"  node {data.get('node_id')} ({data.get('node_type')}): "
                             f"{data.get('exception_type')}: {data.get('exception_message')}")
                tb = data.get("traceback") or []
                if tb:
                    lines.append("  traceback:\n" + "".join(tb)[-4000:])
            elif event == "execution_interrupted":
                lines.append(f"  interrupted at node {data.get('node_id')} ({data.get('node_type')})")
        lines.append(self.log_tail(3000))
        return "\n".join(lines)

    def run(self, prompt: Mapping[str, Any], timeout: float = 600.0) -> Dict[str, Any]:
        """``queue`` + ``wait``."""
        return self.wait(self.queue(prompt), timeout=timeout)

    def interrupt(self) -> None:
        self.post_json("/interrupt", {})

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        """``POST /free``: drop loaded models / cached results between tests."""
        self.post_json("/free", {"unload_models": unload_models, "free_memory": free_memory})

    # ------------------------------------------------------------------ outputs
    @staticmethod
    def image_refs(history: Mapping[str, Any], node_id: Optional[str] = None) -> List[Dict[str, str]]:
        """The ``{"filename", "subfolder", "type"}`` records of a history entry's images."""
        refs = []
        for nid, out in (history.get("outputs") or {}).items():
            if node_id is not None and str(nid) != str(node_id):
                continue
            for img in out.get("images") or []:
                refs.append({"filename": img["filename"], "subfolder": img.get("subfolder", ""),
                             "type": img.get("type", "output")})
        return refs

    def images(self, history: Mapping[str, Any], node_id: Optional[str] = None) -> List[np.ndarray]:
        """Fetch a history entry's images via ``GET /view``: uint8 arrays (H, W, C)."""
        from PIL import Image

        arrays = []
        for ref in self.image_refs(history, node_id):
            data = self.get_bytes("/view?" + urllib.parse.urlencode(ref))
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                if im.mode not in ("RGB", "RGBA", "L"):
                    im = im.convert("RGB")
                arrays.append(np.array(im, dtype=np.uint8))
        return arrays


# ---------------------------------------------------------------------------------- graphs
def txt2img_graph(
    ckpt_name: str,
    filename_prefix: str = "krona_test",
    *,
    loras: Sequence[Sequence[Any]] = (),
    controlnet: Optional[Sequence[Any]] = None,
    positive: str = "a photo of sks dog",
    negative: str = "blurry, lowres",
    width: int = 64,
    height: int = 64,
    batch_size: int = 1,
    seed: int = 1234,
    steps: int = 4,
    cfg: float = 7.0,
    sampler_name: str = "euler",
    scheduler: str = "normal",
) -> Dict[str, Any]:
    """An API-format txt2img graph with readable node ids.

    CheckpointLoaderSimple "ckpt" -> [LoraLoader "lora0", "lora1", ...] -> CLIPTextEncode "pos"/"neg"
    -> [LoadImage "hint" + ControlNetLoader "cn_loader" + ControlNetApplyAdvanced "cn"]
    -> EmptyLatentImage "latent" -> KSampler "sampler" -> VAEDecode "decode" -> SaveImage "save".

    ``loras``: ``(lora_name, strength_model[, strength_clip])`` tuples, chained in order.
    ``controlnet``: ``(controlnet_name, input_image_name[, strength])``.
    Other nodes can be spliced in by editing the returned dict (model output: the last
    "loraN" or "ckpt" slot 0).
    """
    g: Dict[str, Any] = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}}}
    model: List[Any] = ["ckpt", 0]
    clip: List[Any] = ["ckpt", 1]
    for i, spec in enumerate(loras):
        name, sm = spec[0], float(spec[1])
        sc = float(spec[2]) if len(spec) > 2 else sm
        g[f"lora{i}"] = {"class_type": "LoraLoader", "inputs": {
            "model": model, "clip": clip, "lora_name": name, "strength_model": sm, "strength_clip": sc}}
        model, clip = [f"lora{i}", 0], [f"lora{i}", 1]
    g["pos"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": positive}}
    g["neg"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": negative}}
    pos: List[Any] = ["pos", 0]
    neg: List[Any] = ["neg", 0]
    if controlnet is not None:
        cn_name, image_name = controlnet[0], controlnet[1]
        strength = float(controlnet[2]) if len(controlnet) > 2 else 1.0
        g["hint"] = {"class_type": "LoadImage", "inputs": {"image": image_name}}
        g["cn_loader"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": cn_name}}
        g["cn"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": pos, "negative": neg, "control_net": ["cn_loader", 0], "image": ["hint", 0],
            "strength": strength, "start_percent": 0.0, "end_percent": 1.0, "vae": ["ckpt", 2]}}
        pos, neg = ["cn", 0], ["cn", 1]
    g["latent"] = {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch_size}}
    g["sampler"] = {"class_type": "KSampler", "inputs": {
        "model": model, "positive": pos, "negative": neg, "latent_image": ["latent", 0],
        "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler_name, "scheduler": scheduler,
        "denoise": 1.0}}
    g["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["ckpt", 2]}}
    g["save"] = {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": filename_prefix}}
    return g
