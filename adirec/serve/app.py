"""The HTTP service: a FastAPI app over a :class:`~adirec.serve.service.Recommender`.

    GET  /                    a page to try the model: a user's history beside every domain's top K
    POST /v1/recommend        {user_id, domain, k?, exclude_seen?, features?, filters?,
                               include_features?}                                -> top-k of one user
    POST /v1/recommend/batch  {user_ids, domain, k?, exclude_seen?, filters?, include_features?}
    POST /v1/history          {user_id, domain, limit?}  the user's training positives, newest first
    GET  /healthz             liveness and the served model version
    GET  /v1/metadata         domains, corpus sizes, index kinds, model, version, request features
    GET  /metrics             Prometheus: requests by endpoint and status, latency, errors
    POST /v1/admin/reload     {bundle?} swap in a (new) bundle; needs --enable-reload and the token

Bad input is always a 4xx with a message, never a 5xx: malformed JSON or a wrong type 422, JSON
nested deeper than :data:`MAX_JSON_DEPTH` 422, k out of bounds 422, an overlong key 422, a dense
feature outside its range 422, an unknown domain 404 (naming the known ones), a body over the size
limit 413, a missing or wrong token 401, a reload that is disabled or names a bundle outside the
reload root 403.

Authentication: a bearer token (``Authorization: Bearer TOKEN``), read from an environment
variable or a file, never from the command line (where ``ps`` would show it). Admin endpoints
always need it; the others accept requests without it unless ``require_token`` is set, but a
request that presents a wrong token is refused everywhere. The page, ``/docs`` and
``/openapi.json`` are static and never need it (the page asks for the token to call the API).

Reload loads and verifies the new bundle on the side, then swaps one reference: requests already
running finish on the old bundle, later ones see the new one, none fails.
"""
from __future__ import annotations

import hmac
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field as dc_field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from adirec.serve.bundle import BundleError
from adirec.serve.service import (
    DEFAULT_K, DENSE_BOUND, INT64_MAX, INT64_MIN, MAX_FILTER_ITEMS, MAX_HISTORY, MAX_KEY_CHARS, Filters,
    Recommender, RequestError, UnknownDomainError,
)

DEFAULT_MAX_BODY_BYTES = 1 << 20
#: deepest JSON nesting a request may have (the deepest valid body needs 4 levels)
MAX_JSON_DEPTH = 32
#: environment variable holding the API token (``--token-file`` reads it from a file instead)
TOKEN_ENV = "ADIREC_API_TOKEN"

_KEY_HELP = (f"a key as stored in the training data: a string of at most {MAX_KEY_CHARS} characters or a "
             f"64-bit integer (7 and \"7\" are the same key). In a bundle whose keys are scoped by domain "
             f"(GET /v1/metadata: user_key_scope = 'domain', e.g. XMRec's '<market>:<userId>'), a user's "
             f"own id is looked up as '<domain>:<id>' in the request's domain; the stored key works too")
Key = StrictStr | Annotated[StrictInt, Field(ge=INT64_MIN, le=INT64_MAX)]


def _integral(v):
    """JSON Schema counts 5.0 as an integer; accept it as 5 (5.5, "5" and true stay errors)."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


Count = Annotated[StrictInt, BeforeValidator(_integral)]


class FilterSpec(BaseModel):
    """Restrictions applied before the top K is cut, so k items come back while enough remain."""
    model_config = ConfigDict(extra="forbid")
    exclude_items: list[Key] | None = Field(None, max_length=MAX_FILTER_ITEMS,
                                            description="item keys never to return")
    allow_items: list[Key] | None = Field(None, max_length=MAX_FILTER_ITEMS,
                                          description="only these item keys may be returned")
    attributes: dict[str, StrictInt | list[StrictInt]] | None = Field(
        None, description="item field -> encoded value or list of values: a categorical field matches when "
                          "its value is one of them, a sequence field when any of its values is; "
                          "see GET /v1/metadata filter_fields")

    def to_filters(self) -> Filters:
        attributes = {k: v if isinstance(v, list) else [v] for k, v in (self.attributes or {}).items()}
        return Filters(list(self.exclude_items or []), self.allow_items, attributes)


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Key = Field(description="the user: " + _KEY_HELP)
    domain: StrictStr = Field(description="domain to rank (GET /v1/metadata lists them)")
    k: Count | None = Field(None, ge=1, description="number of items, at most min(corpus size, "
                                                        "max_k); default min(100, that bound)")
    exclude_seen: StrictBool = Field(True, description="drop the user's training positives (and request history)")
    features: dict[str, Any] | None = Field(
        None, description=f"for unknown users (or to override): 'history' (item keys, oldest first, at most "
                          f"{MAX_HISTORY}) and user fields by name, encoded (categorical: vocabulary index; "
                          f"dense: standardised, in [-{DENSE_BOUND:g}, {DENSE_BOUND:g}]); see GET /v1/metadata")
    filters: FilterSpec | None = None
    include_features: StrictBool = Field(False, description="add each item's stored (encoded) features")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_ids: list[Key] = Field(min_length=1, description="users, each " + _KEY_HELP)
    domain: StrictStr
    k: Count | None = Field(None, ge=1)
    exclude_seen: StrictBool = True
    filters: FilterSpec | None = Field(None, description="one set of filters for every user of the batch")
    include_features: StrictBool = False


class HistoryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Key = Field(description="the user: " + _KEY_HELP)
    domain: StrictStr = Field(description="the domain that scopes the user's key")
    limit: Count = Field(50, ge=1, le=MAX_HISTORY, description="most recent interactions returned")


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bundle: StrictStr | None = Field(None, max_length=4096, description=(
        "bundle directory, relative to the server's reload root or absolute inside it; default: the one "
        "being served"))


class Recommendation(BaseModel):
    user_id: Key = Field(description="as in the request")
    user_key: Key | None = Field(description="the stored key the user resolved to; null when unknown")
    domain: str
    items: list[StrictStr | StrictInt] = Field(description="item keys, best first")
    scores: list[float] = Field(description="inner products (source 'popular': training positives)")
    model_version: str
    user_known: bool
    source: str = Field(description="model | request_features | popular")
    notes: list[str] = Field(description="what the server did beyond the plain ranking (unknown keys "
                                         "ignored, fewer than k items left, fallbacks)")
    item_features: list[dict[str, Any]] | None = Field(
        None, description="with include_features: per item its stored features, encoded")


class BatchResponse(BaseModel):
    domain: str
    model_version: str
    results: list[Recommendation]


class HistoryResponse(BaseModel):
    user_id: Key
    user_key: Key | None
    user_known: bool
    items: list[StrictStr | StrictInt] = Field(description="newest first")
    domains: list[str]
    timestamps: list[int]
    item_features: list[dict[str, Any]]


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
        enable_reload: expose POST /v1/admin/reload (it needs ``api_token``).
        api_token: the bearer token; None = no authentication (then no admin endpoint).
        require_token: every API endpoint needs the token, not only the admin ones.
        reload_root: reload loads bundles under this directory only; None = the directory that
            holds the served bundle.
    """

    max_k: int = 1000
    max_batch: int = 1000
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    enable_reload: bool = False
    api_token: str | None = dc_field(default=None, repr=False)
    require_token: bool = False
    reload_root: str | Path | None = None

    def __post_init__(self) -> None:
        for name in ("max_k", "max_batch", "max_body_bytes"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.api_token is not None and (len(self.api_token) < 16 or not self.api_token.isprintable()
                                           or self.api_token != self.api_token.strip()):
            raise ValueError("the API token must be at least 16 printable characters without surrounding spaces")
        if self.enable_reload and self.api_token is None:
            raise ValueError(f"reload is an admin endpoint and needs a token: set {TOKEN_ENV} or pass --token-file")
        if self.require_token and self.api_token is None:
            raise ValueError(f"--require-token needs a token: set {TOKEN_ENV} or pass --token-file")


def read_token(token_file: str | Path | None, environ: Mapping[str, str]) -> str | None:
    """The API token from ``token_file`` (surrounding whitespace dropped) or ``environ[TOKEN_ENV]``."""
    if token_file is not None:
        path = Path(token_file)
        try:
            token = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--token-file {path}: cannot read it ({e})") from None
        if not token:
            raise ValueError(f"--token-file {path} is empty")
        return token
    token = environ.get(TOKEN_ENV, "").strip()
    return token or None


class _Served:
    """The recommender being served; replaced whole (one reference assignment) on reload."""

    def __init__(self, recommender: Recommender):
        self.recommender = recommender
        self.reload_lock = threading.Lock()


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or wrong token"},
    404: {"model": ErrorBody, "description": "unknown domain"},
    413: {"model": ErrorBody, "description": "request body too large"},
    422: {"model": ErrorBody, "description": "invalid request"}}


def create_app(recommender: Recommender, config: ServeConfig | None = None) -> FastAPI:
    config = config or ServeConfig()
    served = _Served(recommender)
    reload_root = Path(config.reload_root if config.reload_root is not None else recommender.bundle.path.parent)
    app = FastAPI(title="adirec", version="1",
                  description="Per-domain top-K candidates from an adirec model bundle.")
    metrics = Metrics()
    app.add_middleware(BodyGuard, max_bytes=config.max_body_bytes, max_depth=MAX_JSON_DEPTH)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: it sees every status
    app.state.served = served
    app.state.config = config
    app.state.metrics = metrics
    bearer = HTTPBearer(auto_error=False, description=f"the server's token ({TOKEN_ENV} or --token-file)")

    def check_token(credentials: HTTPAuthorizationCredentials | None, required: bool) -> None:
        if credentials is None:
            if required:
                raise HTTPException(401, "this endpoint needs a token: send 'Authorization: Bearer TOKEN'",
                                    headers={"WWW-Authenticate": "Bearer"})
            return
        if config.api_token is None or not hmac.compare_digest(credentials.credentials.encode(),
                                                               config.api_token.encode()):
            raise HTTPException(401, "wrong token", headers={"WWW-Authenticate": "Bearer"})

    def api_auth(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        check_token(credentials, config.require_token)

    def admin_auth(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if not config.enable_reload:  # the one admin endpoint; say so before asking for a token
            raise HTTPException(403, "reload is disabled; start the server with --enable-reload")
        check_token(credentials, True)

    @app.exception_handler(RequestError)
    async def _bad_request(request: Request, exc: RequestError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(UnknownDomainError)
    async def _unknown_domain(request: Request, exc: UnknownDomainError):
        return JSONResponse({"detail": str(exc), "known_domains": served.recommender.bundle.domain_names},
                            status_code=404)

    @app.exception_handler(RecursionError)
    async def _too_deep(request: Request, exc: RecursionError):  # BodyGuard should have caught it
        return JSONResponse({"detail": "request is nested too deeply"}, status_code=422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        return HTMLResponse(_page_html())

    @app.get("/healthz", response_model=Health, dependencies=[Depends(api_auth)])
    def healthz():
        rec = served.recommender
        return Health(status="ok", model_version=rec.model_version, domains=rec.bundle.domain_names)

    @app.get("/v1/metadata", dependencies=[Depends(api_auth)])
    def metadata() -> dict[str, Any]:
        return served.recommender.metadata()

    @app.get("/metrics", dependencies=[Depends(api_auth)], response_class=Response,
             description="Prometheus text format")
    def prometheus():
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.post("/v1/recommend", response_model=Recommendation, responses=_ERRORS, dependencies=[Depends(api_auth)])
    def recommend(req: RecommendRequest):
        rec = served.recommender  # one snapshot per request: a reload cannot change it midway
        k = _resolve_k(rec, config, req.k, req.domain)
        filters = req.filters.to_filters() if req.filters else None
        return rec.recommend(req.user_id, req.domain, k, req.exclude_seen, req.features, filters,
                             req.include_features).to_dict()

    @app.post("/v1/recommend/batch", response_model=BatchResponse, responses=_ERRORS,
              dependencies=[Depends(api_auth)])
    def recommend_batch(req: BatchRequest):
        rec = served.recommender
        k = _resolve_k(rec, config, req.k, req.domain)
        if len(req.user_ids) > config.max_batch:
            raise RequestError(f"at most {config.max_batch} users per batch, got {len(req.user_ids)}")
        filters = req.filters.to_filters() if req.filters else None
        results = rec.recommend_batch(req.user_ids, req.domain, k, req.exclude_seen, filters, req.include_features)
        return {"domain": req.domain, "model_version": rec.model_version,
                "results": [r.to_dict() for r in results]}

    @app.post("/v1/history", response_model=HistoryResponse, responses=_ERRORS, dependencies=[Depends(api_auth)])
    def history(req: HistoryRequest):
        return served.recommender.user_history(req.user_id, req.domain, req.limit)

    @app.post("/v1/admin/reload", response_model=ReloadResponse, dependencies=[Depends(admin_auth)],
              responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 409: {"model": ErrorBody},
                         422: {"model": ErrorBody}})
    def reload(req: ReloadRequest | None = None):
        old = served.recommender
        path = old.bundle.path if req is None or not req.bundle else _inside_root(req.bundle, reload_root)
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


def _inside_root(requested: str, root: Path) -> Path:
    """The bundle path a reload asks for, if it lies under ``root``; 403 for any escape (``..``,
    an absolute path elsewhere, a symbolic link that leads out)."""
    if "\0" in requested:
        raise HTTPException(422, "bundle path contains a NUL character")
    path = Path(requested)
    if ".." in path.parts:
        raise HTTPException(403, f"bundle path {requested!r} contains '..'; name a bundle under the reload root")
    full = path if path.is_absolute() else root / path
    real, real_root = full.resolve(), root.resolve()
    if real != real_root and real_root not in real.parents:
        raise HTTPException(403, f"bundle path {requested!r} leads outside the reload root {str(real_root)!r}")
    return real


def _resolve_k(rec: Recommender, config: ServeConfig, k: int | None, domain: str) -> int:
    """The request's k checked against the server limit, or the default capped by it."""
    if k is None:
        return min(DEFAULT_K, config.max_k, rec.domain_size(domain))
    if k > config.max_k:
        raise RequestError(f"k must be at most {config.max_k} (server limit), got {k}")
    return k


_PAGE: str | None = None


def _page_html() -> str:
    global _PAGE
    if _PAGE is None:
        _PAGE = resources.files("adirec.serve").joinpath("page.html").read_text(encoding="utf-8")
    return _PAGE


# ------------------------------------------------------------------------ guards
def json_depth(body: bytes) -> int:
    """Deepest nesting of arrays and objects in a JSON text (brackets inside strings ignored), in
    linear time and without recursion: a quote is escaped when an odd run of backslashes
    precedes it, and a bracket counts when an even number of unescaped quotes precedes it."""
    raw = np.frombuffer(body, dtype=np.uint8)
    n = len(raw)
    if n == 0:
        return 0
    backslash = raw == ord("\\")
    position = np.arange(n)
    last_other = np.maximum.accumulate(np.where(backslash, -1, position))  # last non-backslash at or before i
    run_before = np.empty(n, dtype=np.int64)  # backslashes right before i
    run_before[0] = 0
    run_before[1:] = position[:-1] - last_other[:-1]
    quote = (raw == ord('"')) & (run_before % 2 == 0)
    in_string = (np.cumsum(quote) - quote) % 2 == 1  # inside a string (its opening quote excluded)
    outside = ~in_string & ~quote
    step = (outside & ((raw == ord("[")) | (raw == ord("{")))).astype(np.int32)
    step -= outside & ((raw == ord("]")) | (raw == ord("}")))
    return int(np.cumsum(step).max(initial=0))


class BodyGuard:
    """ASGI middleware: a request body over ``max_bytes`` gets a JSON 413 before any route reads
    it, and a body nested deeper than ``max_depth`` a 422 (before a JSON parser recurses into
    it). The declared Content-Length is checked first; a streamed body is counted as it arrives,
    buffered (it is small by then) and replayed to the app."""

    def __init__(self, app, max_bytes: int, max_depth: int):
        self.app, self.max_bytes, self.max_depth = app, max_bytes, max_depth

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._reject(receive, send, 413, f"request body too large (declared size "
                                      f"{declared[:40].decode(errors='replace')}); the limit is {self.max_bytes} bytes")
        messages, chunks, size = [], [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_bytes:
                return await self._reject(receive, send, 413, f"request body too large (more than {size} bytes); "
                                                              f"the limit is {self.max_bytes} bytes")
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        # fewer opening brackets than the limit cannot nest deeper: skip the scan (most bodies)
        if body.count(b"[") + body.count(b"{") > self.max_depth and json_depth(body) > self.max_depth:
            return await self._reject(receive, send, 422,
                                      f"request JSON is nested more than {self.max_depth} levels deep")
        replay = iter(messages)

        async def replayed():
            return next(replay, None) or await receive()

        await self.app(scope, replayed, send)

    @staticmethod
    async def _reject(receive, send, status: int, detail: str) -> None:
        await JSONResponse({"detail": detail}, status_code=status)({"type": "http"}, receive, send)


# ----------------------------------------------------------------------- metrics
class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps in one process do not
    collide): requests by endpoint, method and status, latency by endpoint, errors by status."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram
        from prometheus_client.exposition import CONTENT_TYPE_LATEST
        self.registry = CollectorRegistry()
        self.content_type = CONTENT_TYPE_LATEST
        self.requests = Counter("adirec_requests_total", "HTTP requests answered",
                                ["endpoint", "method", "status"], registry=self.registry)
        self.latency = Histogram("adirec_request_duration_seconds", "time from request to response",
                                 ["endpoint", "method"], registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.errors = Counter("adirec_request_errors_total", "HTTP responses with status >= 400",
                              ["endpoint", "status"], registry=self.registry)

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint, method).observe(seconds)
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()

    def render(self) -> bytes:
        from prometheus_client import generate_latest
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware timing every HTTP request. The endpoint label is the route's path, or
    "unmatched" for paths the app does not serve (so that random paths add no new series)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics
        self._paths: set[str | None] | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self._paths is None:
            self._paths = {getattr(r, "path", None) for r in scope["app"].routes} - {None}
        status = 500  # if the app fails before it answers, the server answers 500
        start = time.perf_counter()

        async def recorded(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recorded)
        finally:
            path = scope.get("path", "")
            self.metrics.observe(path if path in self._paths else "unmatched", scope.get("method", ""), status,
                                 time.perf_counter() - start)


# ------------------------------------------------------------------------ server
def serve(bundle: str | Path, *, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
          threads: int = 1, log_level: str = "warning", access_log: bool = False, out=None) -> None:
    """Load ``bundle``, print where it is served, and run the app under uvicorn until interrupted."""
    import socket

    import faiss
    import torch
    import uvicorn
    out = out or sys.stdout
    # many small concurrent requests: one thread per request beats intra-op parallelism
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    config = config or ServeConfig()
    rec = Recommender.from_path(bundle, max_k=config.max_k, max_batch=config.max_batch)
    app = create_app(rec, config)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))  # bound here, so that the real port of --port 0 is known
    sock.set_inheritable(True)
    real_port = sock.getsockname()[1]
    base = f"http://[{host}]:{real_port}" if family == socket.AF_INET6 else f"http://{host}:{real_port}"
    domains = ", ".join(f"{d.name} ({d.size} items, {d.index_info.get('kind')})" for d in rec.bundle.domains)
    auth = ("token required everywhere" if config.require_token else
            "token required for admin endpoints" if config.api_token else "no token configured: no authentication")
    print(f"adirec serve: listening on {base}\n"
          f"  bundle   {Path(bundle).resolve()} (model {rec.bundle.manifest['model']}, version {rec.model_version})\n"
          f"  domains  {domains}\n"
          f"  page     {base}/\n"
          f"  docs     {base}/docs\n"
          f"  auth     {auth}; reload {'enabled' if config.enable_reload else 'disabled'}", file=out, flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=access_log))
    server.run(sockets=[sock])
