"""The dashboard's web app (Starlette): pages from Jinja2 templates, JSON, and live updates.

Routes:

* ``/``                       the dashboard; the page script renders each snapshot it receives
* ``/events``                 Server-Sent Events: every new snapshot, as it is built
* ``/lineage/{prompt_id}``    one prompt's whole chain, rendered on the server
* ``/api/snapshot``, ``/api/lineage/{id}``, ``/api/dead-letters?stage=&limit=``,
  ``/api/rounds``             the same data as JSON
* ``/static/...``             the page's own script and style (package data)
* ``/vendor/chart.umd.js``    Chart.js, from the cache folder where `cai setup` put it
* ``/healthz``                "ok"

Everything is served from this machine: no page loads anything from elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from cai.dashboard import views

HERE = Path(__file__).parent
SSE_POLL_S = 0.1        # how often a stream looks for a newer snapshot
SSE_KEEPALIVE_S = 15.0  # a comment line keeps idle connections (and proxies) open


def sse_event(snap: dict) -> str:
    """One Server-Sent Event carrying a snapshot."""
    return f"id: {snap.get('seq', 0)}\nevent: snapshot\ndata: {json.dumps(snap, default=str)}\n\n"


async def snapshot_events(collector, is_disconnected, poll_s: float = SSE_POLL_S):
    """Yield every snapshot newer than the last one sent, until the client goes away."""
    sent = -1
    quiet_since = time.monotonic()
    yield "retry: 1000\n\n"
    while not await is_disconnected():
        snap = collector.snapshot()
        if snap.get("seq", 0) != sent:
            sent = snap.get("seq", 0)
            quiet_since = time.monotonic()
            yield sse_event(snap)
        elif time.monotonic() - quiet_since > SSE_KEEPALIVE_S:
            quiet_since = time.monotonic()
            yield ": keep-alive\n\n"
        await asyncio.sleep(poll_s)


def create_app(collector, chart_js: Path, title: str = "continuous-cai") -> Starlette:
    """The app over a running ``Collector`` (or anything with the same methods)."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["pct"] = _pct
    templates.env.filters["when"] = _when

    async def index(request: Request) -> Response:
        return templates.TemplateResponse(request, "index.html", {
            "title": title, "figures": views.FIGURES})

    async def lineage_page(request: Request) -> Response:
        prompt_id = request.path_params["prompt_id"]
        chain = collector.lineage(prompt_id)
        return templates.TemplateResponse(request, "lineage.html", {
            "title": title, "prompt_id": prompt_id, "chain": chain},
            status_code=200 if chain else 404)

    async def events(request: Request) -> Response:
        return StreamingResponse(snapshot_events(collector, request.is_disconnected),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def api_snapshot(request: Request) -> Response:
        return JSONResponse(collector.snapshot())

    async def api_lineage(request: Request) -> Response:
        chain = collector.lineage(request.path_params["prompt_id"])
        return JSONResponse(chain, status_code=200 if chain else 404)

    async def api_dead_letters(request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", 200))
        except ValueError:
            return JSONResponse({"error": "limit must be a whole number"}, status_code=400)
        return JSONResponse(collector.dead_letters(request.query_params.get("stage"), limit))

    async def api_rounds(request: Request) -> Response:
        return JSONResponse(collector.all_rounds())

    async def vendor_chart(request: Request) -> Response:
        if not chart_js.is_file():
            return PlainTextResponse(
                f"Chart.js is missing at {chart_js}. Fix: run `cai setup` (it fetches it from the "
                "npm registry), then reload.", status_code=404)
        return FileResponse(chart_js, media_type="text/javascript")

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[
        Route("/", index),
        Route("/events", events),
        Route("/lineage/{prompt_id:path}", lineage_page),
        Route("/api/snapshot", api_snapshot),
        Route("/api/lineage/{prompt_id:path}", api_lineage),
        Route("/api/dead-letters", api_dead_letters),
        Route("/api/rounds", api_rounds),
        Route("/vendor/chart.umd.js", vendor_chart),
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ])


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _when(stamp) -> str:
    return "-" if not stamp else time.strftime("%H:%M:%S", time.localtime(stamp))
