"""The error answers each route documents in the OpenAPI document."""

from __future__ import annotations

from typing import Final

from litestar.openapi.datastructures import ResponseSpec

from fusillade.server.wire import ErrorResponse

DESCRIPTIONS: Final = {
    400: "Invalid request (the message and `param` say what; `errors` lists file problems)",
    401: "Missing or incorrect API key",
    404: "No such object, or not the caller's",
    408: "The request body came too slowly (the connection is closed)",
    409: "The object's state does not allow the operation",
    413: "Too large (request body, file, line or line count)",
    503: "The database is unavailable",
}


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """``responses=`` for a route: the envelope for each status, plus 400 and 503.

    400 is always listed: it replaces the schema Litestar would document for its own
    validation errors, which the exception handler turns into the envelope too.
    """
    return {
        status: ResponseSpec(
            data_container=ErrorResponse, description=DESCRIPTIONS[status], generate_examples=False
        )
        for status in sorted({400, *statuses, 503})
    }
