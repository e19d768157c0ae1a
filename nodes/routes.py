"""HTTP route for the web extension: GET /krona/info?name=<file> → base model and trigger words."""

from __future__ import annotations

from aiohttp import web

from ..krona_core.files.model import KronAFileError
from ..krona_core.files.reader import read_summary
from . import folders


def register() -> None:
    from server import PromptServer

    routes = PromptServer.instance.routes

    @routes.get("/krona/info")
    async def krona_info(request: web.Request) -> web.Response:
        name = request.query.get("name", "")
        if name not in folders.krona_files():  # only files the nodes list: no path tricks
            return web.json_response({"error": f"no KronA file named {name!r}"}, status=404)
        try:
            return web.json_response(read_summary(folders.resolve(name)))
        except (KronAFileError, FileNotFoundError) as exc:
            return web.json_response({"error": str(exc)}, status=422)
