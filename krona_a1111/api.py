"""HTTP API of the KronA tab (the web UI's FastAPI app): /krona/v1/files, /train, /status, /cancel, /convert.

Requests are checked against their schemas (`requests.py`): malformed or out-of-range ones are
answered 422 naming the field, a second training job while one runs 409, refused input 422."""

from __future__ import annotations

from typing import Any

from . import backend
from .networks import krona_files
from .requests import ConvertRequest, TrainRequest, parse_request


def list_files() -> list[dict]:
    """Every KronA file with its summary, or its own error: one bad file never hides the others."""
    from krona_core.files.model import KronAFileError
    from krona_core.files.reader import read_summary

    out = []
    for name, path in sorted(krona_files().items()):
        try:
            out.append({"network": name, "path": path, **read_summary(path)})
        except (KronAFileError, OSError) as exc:
            out.append({"network": name, "path": path, "error": str(exc)})
    return out


def register(_demo, app) -> None:
    from fastapi import Body, HTTPException

    @app.get("/krona/v1/files")
    def files():
        return list_files()

    @app.post("/krona/v1/train")
    def train(payload: Any = Body(...)):
        try:
            return backend.train(parse_request(TrainRequest, payload))
        except backend.JobBusy as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None
        except (ValueError, OSError) as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None

    @app.get("/krona/v1/status")
    def status():
        job = backend.CURRENT
        return {"status": job.status, "losses": job.losses, "total": job.total}

    @app.post("/krona/v1/cancel")
    def cancel():
        backend.CURRENT.cancel.set()
        return {"status": "cancelling"}

    @app.post("/krona/v1/convert")
    def convert(payload: Any = Body(...)):
        try:
            return {"report": backend.convert(parse_request(ConvertRequest, payload))}
        except (ValueError, OSError) as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
