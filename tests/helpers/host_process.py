"""What the headless-host helpers (ComfyUI, Forge) share: a web UI run as a subprocess in its own
process group with its log in a temporary folder, polled until ready, stopped with escalating
signals, spoken to over JSON HTTP.

Subclasses say how to prepare the folder and environment (``_prepare``), which command to run
(``_build_command``), where (``_cwd``) and when the host is ready (``_ready``). Only the standard
library is used here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

PathLike = Union[str, os.PathLike]

#: stand-in packages for host subprocesses (torchvision; a spandrel for ComfyUI)
HOST_STUBS = Path(__file__).resolve().parent.parent / "host_stubs"

LOG_TAIL = 6000


class HostError(RuntimeError):
    """Base class of the errors the host helpers raise."""


class HostStartupError(HostError):
    """The host exited or did not answer in time; the message carries the end of its log."""


class HostRequestError(HostError):
    """An HTTP call answered with an error; ``.status`` and ``.body`` (parsed JSON or text) as sent."""

    def __init__(self, message: str, status: int = 0, body: Any = None):
        super().__init__(message)
        self.status = status
        self.body = body


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cache_dir() -> Path:
    """``$KRONA_TEST_CACHE``, else ``$XDG_CACHE_HOME`` (or ``~/.cache``)/comfyui-krona-tests."""
    env = os.environ.get("KRONA_TEST_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "comfyui-krona-tests"


_TORCHVISION_CACHE: Dict[str, bool] = {}


def host_interpreter_env(comfyui: PathLike, *first: PathLike) -> dict:
    """The environment for running code in the tests' interpreter with the ComfyUI checkout (and
    the `first` folders before it) on its path, the stand-in torchvision when the real one does not
    import, offline."""
    paths = [*map(str, first), str(comfyui)] + ([] if torchvision_importable() else [str(HOST_STUBS)])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1"}


def torchvision_importable(python: PathLike = sys.executable) -> bool:
    """Whether the real torchvision imports in ``python`` (checked in a subprocess, cached)."""
    key = str(python)
    if key not in _TORCHVISION_CACHE:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        ok = False
        try:
            # cheap look first (no torch import): most often it is simply not installed
            spec = subprocess.run([key, "-c", "import importlib.util as u, sys; "
                                   "sys.exit(0 if u.find_spec('torchvision') else 1)"],
                                  env=env, capture_output=True, timeout=120)
            if spec.returncode == 0:
                full = subprocess.run([key, "-c", "import torchvision, torchvision.transforms, torchvision.ops"],
                                      env=env, capture_output=True, timeout=300)
                ok = full.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        _TORCHVISION_CACHE[key] = ok
    return _TORCHVISION_CACHE[key]


def named_folders(folders: Union[Mapping[str, PathLike], Iterable[PathLike], None]) -> Dict[str, Path]:
    """``{name: folder}`` as given, or folders named after themselves; resolved paths."""
    if folders is None:
        return {}
    if isinstance(folders, Mapping):
        return {str(k): Path(v).resolve() for k, v in folders.items()}
    return {Path(v).resolve().name: Path(v).resolve() for v in folders}


class HostProcess:
    """Lifecycle, log and HTTP of one headless host; see the module docstring for the hooks."""

    #: in log headers and messages
    host_name = "host"
    error_class: type = HostError
    startup_error_class: type = HostStartupError
    request_error_class: type = HostRequestError
    #: signals sent to the process group in turn, each with the seconds to wait for the exit
    stop_signals: Sequence[tuple] = ((signal.SIGTERM, 15), (signal.SIGKILL, 10))
    request_timeout = 120.0
    ready_poll_seconds = 0.25

    def __init__(self, startup_timeout: float, keep_dir: bool, env: Optional[Dict[str, str]] = None):
        self.startup_timeout = startup_timeout
        self.keep_dir = keep_dir
        self.extra_env = dict(env or {})
        self.host = "127.0.0.1"
        self.port: Optional[int] = None
        self.proc: Optional[subprocess.Popen] = None
        self.root: Optional[Path] = None
        self.command: List[str] = []
        self.startup_seconds: Optional[float] = None
        self._log_path: Optional[Path] = None
        self._log_file = None
        self._final_log: Optional[str] = None

    # ------------------------------------------------------------------ hooks
    def _prepare(self) -> Dict[str, str]:
        """Create ``self.root`` and ``self._log_path`` and everything the host needs; return its environment."""
        raise NotImplementedError

    def _build_command(self) -> List[str]:
        raise NotImplementedError

    def _cwd(self) -> Path:
        raise NotImplementedError

    def _ready(self) -> bool:
        """One readiness probe (the host is running); connection errors count as not ready."""
        raise NotImplementedError

    def _remove_links(self) -> None:
        """Undo anything placed outside ``self.root`` (called by stop)."""

    # ------------------------------------------------------------------ model files
    @property
    def models_dir(self) -> Path:
        raise NotImplementedError

    def model_dir(self, folder: str) -> Path:
        """``<models_dir>/<folder>`` (created): the first place the host looks for that kind of model."""
        d = self.models_dir / folder
        d.mkdir(parents=True, exist_ok=True)
        return d

    def add_model(self, folder: str, src: PathLike, name: Optional[str] = None, copy: bool = False) -> str:
        """Make ``src`` visible to the host as ``<folder>/<name>``; returns the name to use.

        Symlinked by default (large cached checkpoints), copied with ``copy=True``. After start,
        ComfyUI rescans a folder when its mtime changes; Forge needs its refresh API.
        """
        src = Path(src).resolve()
        if not src.exists():
            raise FileNotFoundError(src)
        name = name or src.name
        dst = self.model_dir(folder) / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        if copy:
            shutil.copyfile(src, dst)
        else:
            dst.symlink_to(src)
        return name

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Optional[Path]:
        return self._log_path

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self):
        """Start the host and wait until it answers; retries on a port clash."""
        if self.proc is not None:
            raise self.error_class("already started")
        self._final_log = None
        try:
            env = self._prepare()
        except BaseException:
            self._cleanup_files()
            raise
        last_error: Optional[BaseException] = None
        for _attempt in range(3):
            self.port = free_port()
            self.command = self._build_command()
            self._log_file = open(self._log_path, "ab")
            self._log_file.write(f"$ {' '.join(self.command)}\n".encode())
            self._log_file.flush()
            started = time.monotonic()
            self.proc = subprocess.Popen(
                self.command, cwd=str(self._cwd()), env=env,
                stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                self.wait_ready(self.startup_timeout)
                self.startup_seconds = time.monotonic() - started
                return self
            except BaseException as e:
                if not isinstance(e, self.startup_error_class):
                    self.stop()
                    raise
                last_error = e
                port_clash = "address already in use" in self.log_text().lower()
                self._stop_process()
                if not port_clash:
                    break
        self._cleanup_files()
        raise last_error  # type: ignore[misc]

    def wait_ready(self, timeout: Optional[float] = None) -> None:
        """Probe ``_ready`` until it holds (raises the startup error on exit or timeout)."""
        timeout = self.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise self.startup_error_class(f"{self.host_name} exited (code {code}) before it was ready\n{self.log_tail()}")
            try:
                if self._ready():
                    return
            except (urllib.error.URLError, ConnectionError, socket.timeout, OSError):
                pass
            if time.monotonic() > deadline:
                raise self.startup_error_class(f"{self.host_name} was not ready within {timeout:.0f}s\n{self.log_tail()}")
            time.sleep(self.ready_poll_seconds)

    def _stop_process(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            for sig, wait in self.stop_signals:
                try:
                    os.killpg(proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    break
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if proc is not None:
            try:  # children left in the group after the leader exited
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _cleanup_files(self) -> None:
        self._remove_links()
        if self._log_path is not None and self._log_path.exists():
            self._final_log = self._log_path.read_bytes().decode("utf-8", errors="replace")
        if self.root is not None and not self.keep_dir:
            shutil.rmtree(self.root, ignore_errors=True)

    def stop(self) -> None:
        """Stop the host (its process group) and remove the temporary folder (the log stays readable)."""
        self._stop_process()
        self._cleanup_files()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ logs
    def log_text(self) -> str:
        """Everything the host wrote to stdout/stderr so far (still available after stop())."""
        if self._log_path is None or not self._log_path.exists():
            return self._final_log or ""
        if self._log_file is not None:
            self._log_file.flush()
        return self._log_path.read_bytes().decode("utf-8", errors="replace")

    def log_tail(self, chars: int = LOG_TAIL) -> str:
        """The last ``chars`` characters of the log, with a header line (for assertion messages)."""
        text = self.log_text()
        return (f"--- {self.host_name} log (tail) ---\n" + text[-chars:]) if text else f"(no {self.host_name} output)"

    # ------------------------------------------------------------------ HTTP
    def _request(self, method: str, path: str, data: Any = None, timeout: Optional[float] = None):
        body = None
        headers = {}
        if data is not None:
            body = json.dumps(data).encode("utf-8")
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            return urllib.request.urlopen(req, timeout=self.request_timeout if timeout is None else timeout)
        except urllib.error.HTTPError as e:
            raw = e.read().decode("utf-8", errors="replace")
            try:
                parsed: Any = json.loads(raw)
            except ValueError:
                parsed = raw
            raise self.request_error_class(f"{method} {path}: HTTP {e.code}: {raw[:2000]}\n{self.log_tail(3000)}",
                                           status=e.code, body=parsed) from None

    def get_json(self, path: str, timeout: Optional[float] = None) -> Any:
        with self._request("GET", path, timeout=timeout) as r:
            raw = r.read()
            return json.loads(raw.decode("utf-8")) if raw else None

    def post_json(self, path: str, data: Any = None, timeout: Optional[float] = None) -> Any:
        with self._request("POST", path, {} if data is None else data, timeout=timeout) as r:
            raw = r.read()
            return json.loads(raw.decode("utf-8")) if raw else None

    def get_bytes(self, path: str, timeout: Optional[float] = None) -> bytes:
        with self._request("GET", path, timeout=timeout) as r:
            return r.read()
