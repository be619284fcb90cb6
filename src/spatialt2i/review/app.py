"""The review web app: a FastAPI JSON API plus one static page (``static/``, plain JS).

Images are served by pair id and side only (``/api/pairs/{id}/image/{chosen|rejected}``), read
from the parquet cells, never from a path named in the URL. Static files are served by Starlette's
``StaticFiles``, which refuses paths outside its folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from ..errors import DatasetError
from .service import ReviewError, ReviewService

STATIC = Path(__file__).parent / "static"


class Join(BaseModel):
    name: str = Field(..., max_length=100)


class VerdictIn(BaseModel):
    pair_id: str = Field(..., max_length=1000)
    reviewer: str = Field(..., max_length=100)
    verdict: Literal["accept", "reject", "skip"]
    reason: Optional[str] = Field(None, max_length=1000)


def create_app(service: ReviewService) -> FastAPI:
    app = FastAPI(title="spatialt2i pair review", docs_url="/api/docs", redoc_url=None,
                  openapi_url="/api/openapi.json")
    app.state.service = service
    svc = service

    @app.exception_handler(ReviewError)
    async def _review_error(request: Request, exc: ReviewError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(DatasetError)
    async def _dataset_error(request: Request, exc: DatasetError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        msgs = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse({"detail": f"bad request: {msgs}"}, status_code=422)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/info")
    def info() -> dict:
        return {"dataset": svc.index.root.name, "pairs": len(svc.index), "reviewers_per_pair": svc.k,
                "reviewers": list(svc.roster())}

    @app.get("/api/reviewers")
    def reviewers() -> list[dict]:
        return [svc.progress(r) for r in svc.roster()]

    @app.post("/api/reviewers")
    def join(body: Join) -> dict:
        return svc.add_reviewer(body.name)

    @app.get("/api/reviewers/{name}/progress")
    def progress(name: str) -> dict:
        return svc.progress(name)

    @app.get("/api/reviewers/{name}/next")
    def next_pos(name: str, after: int = -1) -> dict:
        return {"pos": svc.next_pos(name, after), "total": len(svc.queue(name))}

    @app.get("/api/reviewers/{name}/queue/{pos}")
    def item(name: str, pos: int) -> dict:
        return svc.item(name, pos)

    @app.post("/api/verdicts")
    def verdict(body: VerdictIn) -> dict:
        return svc.record(body.pair_id, body.reviewer, body.verdict, body.reason)

    @app.get("/api/pairs/{pair_id}")
    def pair(pair_id: str) -> dict:
        return svc.pair(pair_id)

    @app.get("/api/pairs/{pair_id}/image/{side}")
    def image(pair_id: str, side: Literal["chosen", "rejected"]) -> Response:
        svc._check_pair(pair_id)
        data, media = svc.index.image(pair_id, side)
        return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=3600",
                                                          "X-Content-Type-Options": "nosniff"})

    @app.get("/api/stats")
    def stats() -> dict:
        return svc.stats()

    return app


def serve(service: ReviewService, host: str = "127.0.0.1", port: int = 8765, log_level: str = "info") -> None:
    import uvicorn

    uvicorn.run(create_app(service), host=host, port=port, log_level=log_level, workers=1)
