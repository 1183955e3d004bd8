"""The HTTP service: a FastAPI app over a :class:`~adirec.serve.service.Recommender`.

    POST /v1/recommend        {user_id, domain, k?, exclude_seen?, features?} -> top-k of one user
    POST /v1/recommend/batch  {user_ids, domain, k?, exclude_seen?}           -> top-k of many users
    GET  /healthz             liveness and the served model version
    GET  /v1/metadata         domains, corpus sizes, index kinds, model, version, request features
    POST /v1/admin/reload     {bundle?} swap in a (new) bundle; 403 unless enabled

Bad input is always a 4xx with a message: malformed JSON or a wrong type 422, k out of bounds
422, an unknown domain 404 (naming the known ones), a body over the size limit 413. Reload loads
and verifies the new bundle on the side, then swaps one reference: requests already running
finish on the old bundle, later ones see the new one, none fails.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from adirec.serve.bundle import BundleError
from adirec.serve.service import DEFAULT_K, Recommender, RequestError, UnknownDomainError

DEFAULT_MAX_BODY_BYTES = 1 << 20

UserId = StrictStr | StrictInt


def _integral(v):
    """JSON Schema counts 5.0 as an integer; accept it as 5 (5.5, "5" and true stay errors)."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


Count = Annotated[StrictInt, BeforeValidator(_integral)]


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: UserId = Field(description="raw user key as in the training data")
    domain: StrictStr
    k: Count | None = Field(None, ge=1, description="number of items, at most min(corpus size, "
                                                        "max_k); default min(100, that bound)")
    exclude_seen: StrictBool = Field(True, description="drop the user's training positives (and request history)")
    features: dict[str, Any] | None = Field(
        None, description="for unknown users (or to override): 'history' (item keys, oldest first) "
                          "and user fields by name; see GET /v1/metadata")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_ids: list[UserId] = Field(min_length=1)
    domain: StrictStr
    k: Count | None = Field(None, ge=1)
    exclude_seen: StrictBool = True


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bundle: StrictStr | None = Field(None, description="bundle directory; default: the one being served")


class Recommendation(BaseModel):
    user_id: UserId
    domain: str
    items: list[StrictStr | StrictInt]
    scores: list[float]
    model_version: str
    user_known: bool
    source: str = Field(description="model | request_features | popular")
    notes: list[str]


class BatchResponse(BaseModel):
    domain: str
    model_version: str
    results: list[Recommendation]


class Health(BaseModel):
    status: str
    model_version: str
    domains: list[str]


class ReloadResponse(BaseModel):
    status: str
    model_version: str
    previous_model_version: str
    bundle: str


class ErrorBody(BaseModel):
    detail: Any


@dataclass
class ServeConfig:
    """Attributes:
        max_k: largest k a request may ask for (also bounded by each corpus).
        max_batch: most users in one batch request.
        max_body_bytes: larger request bodies get 413.
        enable_reload: expose POST /v1/admin/reload.
    """

    max_k: int = 1000
    max_batch: int = 1000
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    enable_reload: bool = False

    def __post_init__(self) -> None:
        for name in ("max_k", "max_batch", "max_body_bytes"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")


class _Served:
    """The recommender being served; replaced whole (one reference assignment) on reload."""

    def __init__(self, recommender: Recommender):
        self.recommender = recommender
        self.reload_lock = threading.Lock()


_ERRORS = {404: {"model": ErrorBody, "description": "unknown domain"},
           413: {"model": ErrorBody, "description": "request body too large"},
           422: {"model": ErrorBody, "description": "invalid request"}}


def create_app(recommender: Recommender, config: ServeConfig | None = None) -> FastAPI:
    config = config or ServeConfig()
    served = _Served(recommender)
    app = FastAPI(title="adirec", version="1",
                  description="Per-domain top-K candidates from an adirec model bundle.")
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.state.served = served
    app.state.config = config

    @app.exception_handler(RequestError)
    async def _bad_request(request: Request, exc: RequestError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(UnknownDomainError)
    async def _unknown_domain(request: Request, exc: UnknownDomainError):
        return JSONResponse({"detail": str(exc), "known_domains": served.recommender.bundle.domain_names},
                            status_code=404)

    @app.get("/healthz", response_model=Health)
    def healthz():
        rec = served.recommender
        return Health(status="ok", model_version=rec.model_version, domains=rec.bundle.domain_names)

    @app.get("/v1/metadata")
    def metadata() -> dict[str, Any]:
        return served.recommender.metadata()

    @app.post("/v1/recommend", response_model=Recommendation, responses=_ERRORS)
    def recommend(req: RecommendRequest):
        rec = served.recommender  # one snapshot per request: a reload cannot change it midway
        k = _resolve_k(rec, config, req.k, req.domain)
        return rec.recommend(req.user_id, req.domain, k, req.exclude_seen, req.features).to_dict()

    @app.post("/v1/recommend/batch", response_model=BatchResponse, responses=_ERRORS)
    def recommend_batch(req: BatchRequest):
        rec = served.recommender
        k = _resolve_k(rec, config, req.k, req.domain)
        if len(req.user_ids) > config.max_batch:
            raise RequestError(f"at most {config.max_batch} users per batch, got {len(req.user_ids)}")
        results = rec.recommend_batch(req.user_ids, req.domain, k, req.exclude_seen)
        return {"domain": req.domain, "model_version": rec.model_version,
                "results": [r.to_dict() for r in results]}

    @app.post("/v1/admin/reload", response_model=ReloadResponse,
              responses={403: {"model": ErrorBody}, 409: {"model": ErrorBody}, 422: {"model": ErrorBody}})
    def reload(req: ReloadRequest | None = None):
        if not config.enable_reload:
            raise HTTPException(403, "reload is disabled; start the server with --enable-reload")
        old = served.recommender
        path = Path(req.bundle) if req is not None and req.bundle else old.bundle.path
        if not served.reload_lock.acquire(blocking=False):
            raise HTTPException(409, "another reload is in progress")
        try:
            try:
                new = Recommender.from_path(path, max_k=old.max_k, max_batch=old.max_batch)
            except BundleError as e:
                raise HTTPException(422, f"bundle not loaded, still serving {old.model_version}: {e}") from None
            served.recommender = new  # the swap: a single reference assignment
        finally:
            served.reload_lock.release()
        return ReloadResponse(status="reloaded", model_version=new.model_version,
                              previous_model_version=old.model_version, bundle=str(path))

    return app


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets a JSON 413 before any route reads
    it. The declared Content-Length is checked first; a streamed body is counted as it arrives,
    buffered (it is small by then) and replayed to the app."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._reject(send, f"declared size {declared.decode(errors='replace')!s}")
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._reject(send, f"more than {size} bytes")
            if not message.get("more_body", False):
                break
        replay = iter(messages)

        async def replayed():
            return next(replay, None) or await receive()

        await self.app(scope, replayed, send)

    async def _reject(self, send, what: str) -> None:
        response = JSONResponse({"detail": f"request body too large ({what}); the limit is "
                                           f"{self.max_bytes} bytes"}, status_code=413)
        await response({"type": "http"}, None, send)


def _resolve_k(rec: Recommender, config: ServeConfig, k: int | None, domain: str) -> int:
    """The request's k checked against the server limit, or the default capped by it."""
    if k is None:
        return min(DEFAULT_K, config.max_k, rec.domain_size(domain))
    if k > config.max_k:
        raise RequestError(f"k must be at most {config.max_k} (server limit), got {k}")
    return k


def serve(bundle: str | Path, *, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
          threads: int = 1, log_level: str = "warning", access_log: bool = False) -> None:
    """Load ``bundle`` and run the app under uvicorn until interrupted."""
    import faiss
    import torch
    import uvicorn
    # many small concurrent requests: one thread per request beats intra-op parallelism
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    config = config or ServeConfig()
    rec = Recommender.from_path(bundle, max_k=config.max_k, max_batch=config.max_batch)
    app = create_app(rec, config)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log)
