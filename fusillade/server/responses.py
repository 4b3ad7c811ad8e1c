"""The error answers each route documents in the OpenAPI document."""

from __future__ import annotations

from typing import Final

from litestar.openapi.datastructures import ResponseSpec

from fusillade.server.wire import ErrorResponse

DESCRIPTIONS: Final = {
    400: "Invalid request (the message and `param` say what; `errors` lists file problems)",
    401: "Missing or incorrect API key",
    403: "Host or Origin not allowed (a server without API keys answers loopback names only)",
    404: "No such object, or not the caller's",
    408: "The request body came too slowly (the connection is closed)",
    409: "The object's state does not allow the operation, or the Idempotency-Key was "
    "used for a different request",
    413: "Too large (request body, file, line or line count)",
    415: "The body is not sent as Content-Type: application/json",
    503: "The database is unavailable",
}


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """``responses=`` for a route: the envelope for each status, plus 400, 403 and 503.

    400 is always listed: it replaces the schema Litestar would document for its own
    validation errors, which the exception handler turns into the envelope too. 403 is
    always possible: the ``Host``/``Origin`` check runs before every route.
    """
    return {
        status: ResponseSpec(
            data_container=ErrorResponse, description=DESCRIPTIONS[status], generate_examples=False
        )
        for status in sorted({400, 403, *statuses, 503})
    }
