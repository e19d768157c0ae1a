"""HTTP routes for the web extension: GET /krona/info?name=<file> → base model and trigger words
of one listed file; GET /krona/info without a name → every listed file, each with its summary or
its own error (one unreadable or malformed file never hides the others)."""

from __future__ import annotations

from aiohttp import web

from ..krona_core.files.model import KronAFileError
from ..krona_core.files.reader import read_summary
from . import folders


def summary(name: str) -> dict:
    """{"file", summary…} or {"file", "error"} of one listed file."""
    try:
        return {"file": name, **read_summary(folders.resolve(name))}
    except (KronAFileError, OSError) as exc:
        return {"file": name, "error": str(exc)}


def register() -> None:
    from server import PromptServer

    routes = PromptServer.instance.routes

    @routes.get("/krona/info")
    async def krona_info(request: web.Request) -> web.Response:
        listed = folders.krona_files()
        name = request.query.get("name")
        if name is None:
            return web.json_response([summary(n) for n in listed])
        if name not in listed:  # only files the nodes list: no path tricks
            return web.json_response({"error": f"no KronA file named {name!r}"}, status=404)
        found = summary(name)
        return web.json_response(found, status=422 if "error" in found else 200)
