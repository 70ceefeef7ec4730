"""The HTTP face of :class:`SearchService`: a FastAPI app served by a Ray Serve deployment.

Routes (JSON unless said otherwise; errors are ``{"error": "..."}`` with a 4xx status):

========================================  =====================================================
``GET /``                                 the search page (static HTML, CSS and JavaScript)
``GET /health``                           model, table, rows of this model, table version
``GET /search?q=&k=10&split=&hybrid=0``   ``{"query", "hits": [...]}``, best first, ranked
                                          ``by=vector`` (the video) or ``by=moments``
                                          (its best segment)
``GET /similar/{video_id}?k=10&split=``   videos nearest to that video's stored vector
``GET /videos/{video_id}``                the row: uri, captions, segment spans
``GET /video/{video_id}``                 the file; honours ``Range`` (206 and the bytes)
``GET /thumbnail/{video_id}?t=``          a JPEG of the frame at ``t`` seconds
========================================  =====================================================
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route parameters' annotations
# at run time, and Ray Serve's class-based views cannot resolve them from strings.
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from ray import serve

from pipelines.serve.media import RangeNotSatisfiableError, parse_range
from pipelines.serve.service import MAX_K, SearchService, ServeConfig, ServiceError, hit_json

STATIC = Path(__file__).parent / "static"
_STATIC_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript"}

app = FastAPI(title="centerclip search", docs_url=None, redoc_url=None)


@app.exception_handler(ServiceError)
def _service_error(_: Request, err: ServiceError) -> JSONResponse:
    return JSONResponse({"error": str(err)}, status_code=err.status)


@app.exception_handler(RequestValidationError)
def _bad_parameter(_: Request, err: RequestValidationError) -> JSONResponse:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in err.errors()
    )
    return JSONResponse({"error": f"bad request: {problems}"}, status_code=400)


# A replica that is told to stop checks for ongoing requests every this many seconds and stops
# once there are none. Searches take milliseconds; Serve's default of 2 s made every stop (a
# redeploy, SIGTERM, a scale-down) wait 2 s for an idle replica.
DRAIN_CHECK_S = 0.2


@serve.deployment(
    name="search",
    ray_actor_options={"num_cpus": 1},
    graceful_shutdown_wait_loop_s=DRAIN_CHECK_S,
)
@serve.ingress(app)
class SearchDeployment:
    """One replica: the model and the table, loaded once, answering every route above."""

    def __init__(self, config: ServeConfig) -> None:
        self.service = SearchService(config)

    @app.get("/")
    def page(self) -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}")
    def static(self, name: str) -> FileResponse:
        path = STATIC / name
        if path.suffix not in _STATIC_TYPES or not path.is_file() or path.parent != STATIC:
            raise ServiceError(404, f"no static file {name!r}")
        return FileResponse(path, media_type=_STATIC_TYPES[path.suffix])

    @app.get("/health")
    def health(self) -> dict[str, Any]:
        return self.service.health()

    @app.get("/search")
    def search(
        self,
        q: str = "",
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
        split: str | None = None,
        hybrid: bool = False,
        by: Literal["vector", "moments"] = "vector",
    ) -> dict[str, Any]:
        hits = self.service.search(q, k=k, split=split or None, hybrid=hybrid, by=by)
        return {"query": q, "hybrid": hybrid, "by": by, "hits": [hit_json(hit) for hit in hits]}

    @app.get("/similar/{video_id}")
    def similar(
        self,
        video_id: str,
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
        split: str | None = None,
    ) -> dict[str, Any]:
        hits = self.service.similar(video_id, k=k, split=split or None)
        return {"video_id": video_id, "hits": [hit_json(hit) for hit in hits]}

    @app.get("/videos/{video_id}")
    def row(self, video_id: str) -> dict[str, Any]:
        return self.service.video(video_id)

    @app.get("/video/{video_id}")
    def video(self, video_id: str, range: Annotated[str | None, Header()] = None) -> Response:
        uri, size = self.service.video_size(video_id)
        headers = {"Accept-Ranges": "bytes"}
        if range is None:
            headers["Content-Length"] = str(size)
            return StreamingResponse(
                self.service.media.stream(uri), media_type="video/mp4", headers=headers
            )
        try:
            wanted = parse_range(range, size)
        except RangeNotSatisfiableError as err:
            return JSONResponse(
                {"error": str(err)}, status_code=416, headers={"Content-Range": f"bytes */{size}"}
            )
        headers["Content-Range"] = wanted.content_range()
        return Response(
            self.service.video_bytes(uri, wanted),
            status_code=206,
            media_type="video/mp4",
            headers=headers,
        )

    @app.get("/thumbnail/{video_id}")
    def thumbnail(
        self, video_id: str, t: Annotated[float | None, Query(ge=0, allow_inf_nan=False)] = None
    ) -> Response:
        # Rounded so that nearby times share one cached JPEG.
        jpeg = self.service.thumbnail(video_id, None if t is None else round(t, 1))
        return Response(
            jpeg, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"}
        )
