"""HTTP API of the KronA tab (the web UI's FastAPI app): /krona/v1/files, /train, /status, /cancel, /convert."""

from __future__ import annotations

from dataclasses import fields

from . import backend
from .networks import krona_files


def register(_demo, app) -> None:
    from fastapi import Body, HTTPException

    from krona_core.files.model import KronAFileError
    from krona_core.files.reader import read_summary

    @app.get("/krona/v1/files")
    def files():
        out = []
        for name, path in sorted(krona_files().items()):
            try:
                out.append({"network": name, "path": path, **read_summary(path)})
            except KronAFileError as exc:
                out.append({"network": name, "path": path, "error": str(exc)})
        return out

    @app.post("/krona/v1/train")
    def train(payload: dict = Body(...)):
        known = {f.name for f in fields(backend.TrainRequest)}
        unknown = set(payload) - known
        if unknown:
            raise HTTPException(status_code=422, detail=f"unknown fields {sorted(unknown)}; expected {sorted(known)}")
        try:
            return backend.train(backend.TrainRequest(**payload))
        except backend.JobBusy as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None
        except (ValueError, FileNotFoundError) as exc:
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
    def convert(payload: dict = Body(...)):
        try:
            return {"report": backend.convert(**payload)}
        except (ValueError, OSError) as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
