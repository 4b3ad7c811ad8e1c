"""The one translation point from exceptions to OpenAI error envelopes.

Every error answer is ``{"error": {"message", "type", "param", "code", "errors"}}``:

===================================================  ======  ============================
exception                                            status  ``type``
===================================================  ======  ============================
``InvalidJSONL`` with a size-limit problem           413     ``invalid_request_error``
``InvalidJSONL``, ``ValidationError``                400     ``invalid_request_error``
Litestar's ``ValidationException``/``ClientException`` 400   ``invalid_request_error``
``Unauthorized``                                     401     ``invalid_request_error``
``NotFound`` (also another owner's id)               404     ``invalid_request_error``
``Conflict``                                         409     ``invalid_request_error``
``RequestEntityTooLarge`` (body over the route limit) 413    ``invalid_request_error``
``Refused`` (a check of the server's own: host,       its     ``invalid_request_error``
origin, content type, encoding, JSON, body timing)    status
``ClientDisconnected`` (logged: one INFO line)       400     ``invalid_request_error``
``StoreUnavailable``                                 503     ``server_error``
anything else                                        500     ``server_error`` (logged)
===================================================  ======  ============================

Litestar's own answers (404 for an unknown path, 405 for a wrong method) get the same
envelope. Never 422.

Which error a request made is decided from facts this project checks itself (types it
raises, bytes it decoded), never from the wording of a dependency's message: JSON bodies
are read, decoded and checked by ``fusillade.server.intake`` before Litestar sees them.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    ValidationException,
)
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from fusillade.core.jsonl import LIMIT_CODES
from fusillade.errors import (
    Conflict,
    InvalidJSONL,
    NotFound,
    StoreUnavailable,
    ValidationError,
    echo,
)
from fusillade.server.requestid import request_id
from fusillade.server.wire import BatchError, BatchErrors, ErrorBody, ErrorResponse

log = logging.getLogger("fusillade.server")

INVALID = "invalid_request_error"
SERVER = "server_error"


class Refused(Exception):
    """A request refused by a check of the server's own, answered as ``status``/``code``.

    ``log`` (when set) is the one line an operator sees at INFO: refusals caused by the
    client's connection (too slow) rather than by what it asked.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        log: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.log = log


class ClientDisconnected(Exception):
    """The client went away before its request body was complete."""

    def __init__(self, received: int) -> None:
        super().__init__(f"the client went away after {received} bytes of the body")
        self.received = received


class Unauthorized(NotAuthorizedException):
    """A missing or wrong bearer key (401)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(detail=message)
        self.code = code


def envelope(
    status: int,
    message: str,
    *,
    type_: str = INVALID,
    param: str | None = None,
    code: str | None = None,
    errors: BatchErrors | None = None,
    headers: dict[str, str] | None = None,
) -> Response[ErrorResponse]:
    body = ErrorResponse(ErrorBody(message, type_, param, code, errors))
    return Response(body, status_code=status, media_type=MediaType.JSON, headers=headers)


_KINDS = {"file": "File", "input file": "File", "batch": "Batch", "request": "Request"}


def _not_found_message(exc: NotFound) -> str:
    """OpenAI's wording, naming the id as the client sent it (never an internal uuid)."""
    return f"No such {_KINDS.get(exc.kind, exc.kind)} object: {exc.public_id}"


def invalid_jsonl_response(exc: InvalidJSONL) -> Response[ErrorResponse]:
    data = [
        BatchError(
            code=str(getattr(p, "code", "invalid_request")),
            message=str(getattr(p, "message", "")),
            param=getattr(p, "param", None),
            line=getattr(p, "line", None),
        )
        for p in exc.problems
    ]
    too_large = any(getattr(p, "code", None) in LIMIT_CODES for p in exc.problems)
    parts = "; ".join(d.message or "" for d in data) or "invalid JSONL input"
    more = " (more problems not shown)" if exc.truncated else ""
    message = f"invalid batch input file: {parts}{more}"
    first = data[0] if data else None
    return envelope(
        413 if too_large else 400,
        message,
        param=first.param if first else None,
        code=first.code if first else "invalid_jsonl",
        errors=BatchErrors(object="list", data=data),
    )


def _validation_exception_response(exc: ValidationException) -> Response[ErrorResponse]:
    extra = exc.extra if isinstance(exc.extra, list) else []
    problems = [e for e in extra if isinstance(e, dict)]
    if not problems:
        return envelope(400, str(exc.detail), code="invalid_request")
    first = problems[0]
    key = str(first.get("key") or "")
    # "metadata[...]" or "a.b": the top-level field is the parameter, as OpenAI names it
    top = key.split("[", 1)[0].split(".", 1)[0]
    details = "; ".join(
        f"{p.get('key')}: {p.get('message')}" if p.get("key") else str(p.get("message"))
        for p in problems
    )
    param = top or None
    return envelope(400, f"invalid request: {details}", param=param, code="invalid_request")


_HTTP_CODES = {
    400: "invalid_request",
    401: "invalid_api_key",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
}


def exception_to_response(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """The one exception handler (registered for ``Exception``)."""
    if isinstance(exc, InvalidJSONL):
        return invalid_jsonl_response(exc)
    if isinstance(exc, ValidationError):
        return envelope(400, exc.message, param=exc.param, code="invalid_request")
    if isinstance(exc, NotFound):
        return envelope(404, _not_found_message(exc), code="not_found")
    if isinstance(exc, Conflict):
        return envelope(409, str(exc), code="conflict")
    if isinstance(exc, StoreUnavailable):
        log.warning(
            "database unavailable while serving %s %s (request %s)",
            request.method,
            echo(request.url.path),
            request_id(request.scope),
        )
        return envelope(503, "the database is unavailable; try again", type_=SERVER, code=None)
    if isinstance(exc, Unauthorized):
        return envelope(401, str(exc.detail), code=exc.code, headers={"WWW-Authenticate": "Bearer"})
    if isinstance(exc, ValidationException):
        return _validation_exception_response(exc)
    if isinstance(exc, Refused):
        if exc.log is not None:
            log.info("%s %s: %s", request.method, request.url.path, exc.log)
        return envelope(exc.status, exc.message, code=exc.code, headers=exc.headers)
    if isinstance(exc, ClientDisconnected):
        # The client's doing, not the server's: one line, no traceback. Nobody reads
        # the answer.
        log.info("%s %s: %s", request.method, request.url.path, exc)
        return envelope(400, str(exc), code="client_disconnected")
    if isinstance(exc, HTTPException) and exc.status_code < HTTP_500_INTERNAL_SERVER_ERROR:
        status = exc.status_code
        headers = dict(exc.headers) if exc.headers else None
        message = str(exc.detail)
        if status == 404:
            message = f"Unknown request URL: {request.method} {echo(request.url.path)}"
        elif status == 405:
            message = f"Method {request.method} not allowed for {echo(request.url.path)}"
        elif status == 413:
            message = "request body is too large"
        return envelope(status, message, code=_HTTP_CODES.get(status), headers=headers)
    log.error(
        "internal error serving %s %s (request %s)",
        request.method,
        echo(request.url.path),
        request_id(request.scope),
        exc_info=exc,
    )
    return envelope(500, "internal server error", type_=SERVER, code=None)
