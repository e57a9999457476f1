"""The HTTP layer of `mindguard serve`: a FastAPI app factory, its middleware and routes.

`create_app(settings, guard=None)` opens the store, loads the guard (unless one is given) and
returns an ASGI app whose lifespan starts and stops the background parts. Routes translate HTTP to
`GuardService` calls; a pure-ASGI middleware enforces the body-size limit (413) before anything
parses the body, stamps a request id, and records latency and status per route *template* (so no
session id or text reaches metrics or logs). Errors have one shape, OpenAI-style:
`{"error": {"type", "message", "code"}}`, and validation errors name the field without echoing
its value.

Example:
    >>> from mindguard.serve import create_app, load_settings
    >>> app = create_app(load_settings(overrides={"guard": "keyword", "database_url": "sqlite://"}))  # doctest: +SKIP
"""

# no `from __future__ import annotations`: FastAPI must see the local Annotated aliases as objects
import base64
import datetime as dt
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..conversation import Conversation, Message
from ..errors import DataError, MindGuardError
from ..guards import BaseGuard, load_guard
from ..taxonomy import LABELS
from .auth import Principal
from .proxy import ChatProxy
from .schemas import (
    ID_PATTERN,
    AssessRequest,
    AssessResponse,
    ChatCompletionRequest,
    ErrorResponse,
    EventOut,
    EventPage,
    SessionInfo,
    SessionTurnRequest,
    SessionTurnResponse,
)
from .service import ApiError, GuardService, content_error
from .settings import ServeSettings, load_settings
from .store import Store, StoreError

log = logging.getLogger("mindguard.serve")
access_log = logging.getLogger("mindguard.serve.access")

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "missing or invalid API key"},
    403: {"model": ErrorResponse, "description": "the key lacks the scope"},
    413: {"model": ErrorResponse, "description": "request body too large"},
    422: {"model": ErrorResponse, "description": "invalid request (the message names the field)"},
    429: {"model": ErrorResponse, "description": "per-key rate limit exceeded (see Retry-After)"},
    503: {"model": ErrorResponse, "description": "the risk-event store is unavailable"},
}

DESCRIPTION = """Context-aware risk guard for mental-health chatbots.

Authenticate with `Authorization: Bearer <key>` (or `X-API-Key`). Keys belong to a tenant; a tenant
only ever sees its own sessions and events. Every flagged turn is stored before the response is sent.
"""


def _error(status: int, message: str, type_: str, headers: dict[str, str] | None = None,
           extra: dict[str, Any] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": type_, "message": message, "code": status, **(extra or {})}}, status, headers=headers)


def _loc(loc: Any) -> str:
    parts = [str(x) for x in loc if x not in ("body",)] if isinstance(loc, (list, tuple)) else [str(loc)]
    return ".".join(parts) or "body"


class ServeMiddleware:
    """Request id, body-size limit (413 before the body is parsed), latency/status metrics and a
    one-line access log (method, route template, status, duration — never a body)."""

    def __init__(self, app: ASGIApp, service: GuardService) -> None:
        self.app = app
        self.service = service
        self.max_body = service.settings.max_body_bytes
        self.log_access = service.settings.access_log

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = str(uuid.uuid4())
        scope.setdefault("state", {})["request_id"] = rid
        t0 = time.perf_counter()
        status = [500]

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                MutableHeaders(scope=message).append("X-Request-Id", rid)
            await send(message)

        try:
            replay = await self._read_body(scope, receive, send_wrapper)
            if replay is not None:
                await self.app(scope, replay, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            method = scope.get("method", "?")
            elapsed = time.perf_counter() - t0
            m = self.service.metrics
            m.requests.labels(path, method, str(status[0])).inc()
            m.latency.labels(path, method).observe(elapsed)
            if self.log_access:
                access_log.info('"%s %s" %d %.1fms request_id=%s', method, path, status[0], elapsed * 1000, rid)

    async def _read_body(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        """Buffer the body up to the limit and return a `receive` that replays it; None after
        answering 413/400 itself."""
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return receive
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await self._reply(send, 400, "the Content-Length header is not a number", "invalid_request_error")
                return None
            if int(declared) > self.max_body:
                await self._reply(send, 413, f"request body of {declared} bytes is over the limit of {self.max_body} bytes",
                                  "request_too_large")
                return None
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                break
            body = msg.get("body", b"")
            size += len(body)
            if size > self.max_body:
                await self._reply(send, 413, f"request body is over the limit of {self.max_body} bytes", "request_too_large")
                return None
            chunks.append(body)
            if not msg.get("more_body", False):
                break
        data = b"".join(chunks)
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return dict(await receive())  # later calls wait for the disconnect, as streaming responses expect

        return replay

    @staticmethod
    async def _reply(send: Any, status: int, message: str, type_: str) -> None:
        body = json.dumps({"error": {"type": type_, "message": message, "code": status}}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = raw.partition(":")
        if kind != "seq" or not value.isdigit():
            raise ValueError
        return int(value)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(422, "cursor: not a cursor returned by this API") from None


def _utc(t: dt.datetime | None) -> dt.datetime | None:
    if t is None:
        return None
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)


def create_app(settings: ServeSettings | None = None, guard: BaseGuard | None = None) -> FastAPI:
    """The service as an ASGI app (run it with uvicorn, or `mindguard serve`)."""
    settings = settings or load_settings()
    store = Store(settings.database_url)
    if guard is None:
        try:
            guard = load_guard(settings.guard)
        except MindGuardError as exc:
            raise MindGuardError(f"cannot load the guard {settings.guard!r}: {exc}") from None
    service = GuardService(settings, guard, store)
    proxy = ChatProxy(service)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import anyio.to_thread

        # requests wait for the guard in worker threads: allow more of them than the default 40
        anyio.to_thread.current_default_thread_limiter().total_tokens = 128
        service.start()
        try:
            yield
        finally:
            proxy.close()
            service.stop()

    app = FastAPI(title="MindGuard", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url="/docs" if settings.docs else None, redoc_url=None,
                  openapi_url="/openapi.json" if settings.docs else None)
    app.state.service = service
    app.add_middleware(ServeMiddleware, service=service)  # type: ignore[arg-type]

    # -- errors ------------------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.type, exc.headers)

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError) -> JSONResponse:
        log.error("risk-event store unavailable (request %s)", getattr(request.state, "request_id", "?"))
        return _error(503, "the risk-event store is unavailable, so the result could not be recorded; retry later",
                      "server_error", {"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errs):
            return _error(400, "the request body is not valid JSON", "invalid_request_error")
        details = [{"loc": _loc(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in errs]
        first = details[0] if details else {"loc": "body", "msg": "invalid request"}
        more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        return _error(422, f"{first['loc']}: {first['msg']}{more}", "invalid_request_error", extra={"details": details})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found_error", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request_error")
        return _error(exc.status_code, str(exc.detail), kind, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # pragma: no cover - a bug
        log.error("internal error %s (request %s)", type(exc).__name__, getattr(request.state, "request_id", "?"))
        return _error(500, "internal error", "server_error")

    # -- auth ---------------------------------------------------------------------------------------
    bearer = HTTPBearer(auto_error=False, description="MindGuard API key")
    header_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="MindGuard API key (alternative header)")

    def _key(cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
             xkey: Annotated[str | None, Depends(header_key)]) -> str | None:
        return cred.credentials if cred is not None else xkey

    def assess_scope(key: Annotated[str | None, Depends(_key)]) -> Principal:
        return service.authenticate(key, "assess")

    def events_scope(key: Annotated[str | None, Depends(_key)]) -> Principal:
        return service.authenticate(key, "events:read")

    def request_id(request: Request) -> str:
        return str(getattr(request.state, "request_id", "")) or str(uuid.uuid4())

    Assessor = Annotated[Principal, Depends(assess_scope)]
    Reviewer = Annotated[Principal, Depends(events_scope)]
    RequestId = Annotated[str, Depends(request_id)]
    SessionId = Annotated[str, Path(pattern=ID_PATTERN, description="your id for the session (letters, digits, . _ : @ -)")]

    # -- assess -------------------------------------------------------------------------------------
    @app.post("/v1/assess", response_model=AssessResponse, responses=_ERRORS, tags=["assess"],
              summary="Assess the user turns of a conversation")
    def assess(body: AssessRequest, p: Assessor, rid: RequestId) -> Any:
        if len(body.messages) > settings.max_messages:
            raise ApiError(422, f"messages: at most {settings.max_messages} messages are allowed (got {len(body.messages)})")
        for k, m in enumerate(body.messages):
            err = content_error(f"messages.{k}.content", m.content, settings.max_message_chars)
            if err:
                raise ApiError(422, err)
        if not any(m.role == "user" for m in body.messages):
            raise ApiError(422, "messages: there is no user turn to assess")
        try:
            conv = Conversation(body.conversation_id or "request", tuple(Message(m.role, m.content) for m in body.messages))
        except DataError as exc:  # pragma: no cover - the checks above cover what Conversation validates
            raise ApiError(422, f"messages: {exc}") from None
        idx = conv.user_turn_indices()
        if body.last_only:
            idx = idx[-1:]
        verdicts = service.assess_and_record(p, conv, idx, "assess", body.conversation_id, rid)
        return {"conversation_id": body.conversation_id, "guard": guard.name, "flagged": any(v.flagged for v in verdicts),
                "turns": [v.to_dict() for v in verdicts]}

    # -- sessions -----------------------------------------------------------------------------------
    @app.post("/v1/sessions/{session_id}/turns", response_model=SessionTurnResponse, responses=_ERRORS, tags=["sessions"],
              summary="Append one message to a streaming session; a user turn is assessed")
    def session_turn(body: SessionTurnRequest, session_id: SessionId, p: Assessor,
                     rid: RequestId) -> Any:
        return service.session_turn(p, session_id, body.role, body.content, body.message_index, rid)

    @app.get("/v1/sessions/{session_id}", response_model=SessionInfo, responses=_ERRORS, tags=["sessions"],
             summary="State of a live session (counts only, no text)")
    def session_info(session_id: SessionId, p: Assessor) -> Any:
        state = service.sessions.get(p.tenant, session_id)
        if state is None:
            raise ApiError(404, f"no live session {session_id!r}", "not_found_error")
        return state.summary(session_id, settings.session_ttl_s)

    @app.delete("/v1/sessions/{session_id}", status_code=204, responses=_ERRORS, tags=["sessions"],
                summary="End a session and forget its state")
    def session_delete(session_id: SessionId, p: Assessor) -> Response:
        if not service.sessions.delete(p.tenant, session_id):
            raise ApiError(404, f"no live session {session_id!r}", "not_found_error")
        return Response(status_code=204)

    # -- chat proxy ---------------------------------------------------------------------------------
    @app.post("/v1/chat/completions", responses={**_ERRORS, 502: {"model": ErrorResponse, "description": "upstream failure"}},
              tags=["proxy"], summary="OpenAI-compatible chat completions, guarded")
    def chat_completions(body: ChatCompletionRequest, request: Request, p: Assessor,
                         rid: RequestId) -> Any:
        conv_id = request.headers.get("x-mindguard-conversation-id")
        if conv_id is not None and not re.match(ID_PATTERN, conv_id):
            raise ApiError(422, "X-MindGuard-Conversation-Id: 1-128 letters, digits or . _ : @ - expected")
        status, headers, payload = proxy.handle(p, body, conv_id, rid)
        if isinstance(payload, dict):
            return JSONResponse(payload, status, headers=headers)
        return StreamingResponse(payload, status, headers={**headers, "Cache-Control": "no-cache"}, media_type="text/event-stream")

    # -- events -------------------------------------------------------------------------------------
    event_params = {"label", "status", "endpoint", "conversation_id", "since", "until", "min_p_unsafe", "limit", "cursor"}

    @app.get("/v1/events", response_model=EventPage, responses=_ERRORS, tags=["events"],
             summary="Flagged turns of your tenant, newest first")
    def events(request: Request, p: Reviewer,
               label: Annotated[Literal[LABELS] | None, Query(description="only this label")] = None,  # type: ignore[valid-type]
               status: Annotated[Literal["ok", "guard_error", "guard_timeout"] | None, Query(description="only this status")] = None,
               endpoint: Annotated[Literal["assess", "session", "proxy"] | None, Query(description="only from this endpoint")] = None,
               conversation_id: Annotated[str | None, Query(pattern=ID_PATTERN, description="only this conversation/session id")] = None,
               since: Annotated[dt.datetime | None, Query(description="created at or after (ISO 8601; UTC if no offset)")] = None,
               until: Annotated[dt.datetime | None, Query(description="created before (ISO 8601; UTC if no offset)")] = None,
               min_p_unsafe: Annotated[float | None, Query(ge=0.0, le=1.0, description="only p(unsafe) at least this")] = None,
               limit: Annotated[int, Query(ge=1, le=500, description="events per page")] = 50,
               cursor: Annotated[str | None, Query(max_length=64, description="next_cursor of the previous page")] = None) -> Any:
        unknown = sorted(set(request.query_params) - event_params)
        if unknown:
            raise ApiError(422, f"unknown query parameter {unknown[0]!r}; allowed: {', '.join(sorted(event_params))}")
        rows, nxt = store.list_events(p.tenant, label=label, status=status, endpoint=endpoint, conversation_id=conversation_id,
                                      since=_utc(since), until=_utc(until), min_p_unsafe=min_p_unsafe,
                                      before_seq=_decode_cursor(cursor) if cursor else None, limit=limit)
        return {"events": rows, "next_cursor": _encode_cursor(nxt) if nxt is not None else None}

    @app.get("/v1/events/{event_id}", response_model=EventOut, responses=_ERRORS, tags=["events"], summary="One flagged turn")
    def event(event_id: Annotated[str, Path(max_length=64)], p: Reviewer) -> Any:
        row = store.get_event(p.tenant, event_id)
        if row is None:
            raise ApiError(404, f"no event {event_id!r}", "not_found_error")
        return row

    # -- operations ---------------------------------------------------------------------------------
    @app.get("/healthz", tags=["operations"], summary="Liveness")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Readiness: guard running and store reachable")
    def readyz() -> JSONResponse:
        checks = {"guard": service.started and service.runner.alive(), "store": store.ping()}
        ok = all(checks.values())
        return JSONResponse({"status": "ready" if ok else "not ready", "guard": guard.name, "checks": checks}, 200 if ok else 503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=PlainTextResponse)
    def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        service.metrics.guard_queue.set(service.runner.queue_depth())
        service.metrics.sessions.set(len(service.sessions))
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
