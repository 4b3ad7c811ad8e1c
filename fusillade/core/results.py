"""Output, error and input lines in OpenAI's batch format (docs/api.md, file content).

The upstream body is embedded as JSON when it parses (re-serialised on one line) and as
a JSON string otherwise. A body already in that form (``parse_embeddable``, which the daemon
stores for each 2xx it parsed) is spliced in as it is: a download then parses nothing.
A body whose bytes are not UTF-8 is embedded as its U+FFFD rendering, and its exact bytes
follow in ``response.body_base64`` (``fusillade.core.bodies``; docs/semantics.md).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final
from uuid import UUID

import attrs

from fusillade.core.bodies import shown
from fusillade.core.ids import PREFIXES, format_id
from fusillade.core.models import FailureReason, RequestState, RequestTemplate
from fusillade.core.strictjson import LINE_BREAKS, BadJSON, dumps_compact, loads_strict

ERROR_CODES: Final[Mapping[FailureReason, str]] = MappingProxyType(
    {
        FailureReason.TIMEOUT: "request_timeout",
        FailureReason.CONNECT: "connection_error",
        FailureReason.BUILDER: "invalid_request",
        FailureReason.CANCELLED: "batch_cancelled",
        FailureReason.EXPIRED: "batch_expired",
        FailureReason.LOST: "request_lost",
        FailureReason.UNSTORABLE: "result_unstorable",
        # Only used when an HTTP failure has no status (never written by the engine).
        FailureReason.HTTP_STATUS: "upstream_error",
    }
)

REQUEST_PREFIX: Final = PREFIXES["request"]
# A str as a JSON string, as the ensure_ascii=False encoder of dumps_compact writes it.
_json_string: Final = json.encoder.encode_basestring

# Upstream bodies are trusted more than input lines, but must still re-serialise
# without hitting the recursion limit.
_EMBED_MAX_DEPTH: Final = 256


@attrs.frozen
class ResultLine:
    """One line of an output or error file, before formatting (a stored result)."""

    request_id: UUID
    custom_id: str
    state: RequestState
    status: int | None
    body: str | None
    failure_reason: FailureReason | None
    failure_message: str | None
    finished_at: datetime
    # ``body`` is compact strict JSON (one line): embed it without parsing it again.
    body_is_json: bool = False
    # The exact bytes of the body when ``body`` is only a rendering of them.
    body_raw: bytes | None = attrs.field(default=None, repr=False)


def parse_embeddable(text: str) -> tuple[Any, str] | None:
    """When ``text`` is strict JSON: its value, and the compact one-line text that result
    lines embed (``body_is_json``). Else ``None``: result lines embed it as a string."""
    try:
        value = loads_strict(text, _EMBED_MAX_DEPTH)
    except BadJSON:
        return None
    return value, dumps_compact(value)


def _embed(text: str | None) -> Any:
    """``text`` parsed as JSON when it is JSON, else the text itself (``None`` stays)."""
    if text is None:
        return None
    try:
        return loads_strict(text, _EMBED_MAX_DEPTH)
    except BadJSON:
        return text


def _response(
    request_id: UUID,
    status_code: int,
    body: str | None,
    upstream_request_id: str | None,
    body_raw: bytes | None,
) -> dict[str, Any]:
    lossy: bytes | None = None
    if body is not None:
        body, lossy = shown(body, body_raw)
    response = {
        "status_code": status_code,
        "request_id": upstream_request_id if upstream_request_id is not None else str(request_id),
        "body": _embed(body),
    }
    if lossy is not None:
        response["body_base64"] = base64.b64encode(lossy).decode("ascii")
    return response


def format_output_line(
    request_id: UUID,
    custom_id: str,
    status_code: int,
    body_text: str | None,
    *,
    upstream_request_id: str | None = None,
    body_is_json: bool = False,
    body_raw: bytes | None = None,
) -> str:
    """One output-file line (no ``\\n``) for a completed request.

    ``response.request_id`` is the upstream's request id when known, else our request
    uuid in its canonical hyphenated form. ``body_is_json`` says that ``body_text`` came
    from ``parse_embeddable``: it is spliced in, giving the same line without parsing it.
    ``body_raw``: the exact bytes when ``body_text`` is only a rendering of them.
    """
    if body_is_json and body_text is not None and body_raw is None:
        # The same bytes as the dict below through dumps_compact (a test holds them equal).
        h = request_id.hex
        rid = (
            _json_string(upstream_request_id)
            if upstream_request_id is not None
            else f'"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"'
        )
        spliced = (
            f'{{"id":"{REQUEST_PREFIX}{h}","custom_id":{_json_string(custom_id)}'
            f',"response":{{"status_code":{status_code},"request_id":{rid}'
            f',"body":{body_text}}},"error":null}}'
        )
        # Stored text (custom_id, a request id) never holds an unpaired surrogate, so
        # only dumps_compact's escaping of the line breaks that splitlines() sees is left.
        return spliced if spliced.isascii() else spliced.translate(LINE_BREAKS)
    response = _response(request_id, status_code, body_text, upstream_request_id, body_raw)
    line = {
        "id": format_id("request", request_id),
        "custom_id": custom_id,
        "response": response,
        "error": None,
    }
    return dumps_compact(line)


def format_error_line(
    request_id: UUID,
    custom_id: str,
    failure_reason: FailureReason,
    message: str,
    status_code: int | None = None,
    body: str | None = None,
    *,
    upstream_request_id: str | None = None,
    body_raw: bytes | None = None,
) -> str:
    """One error-file line (no ``\\n``) for a failed or canceled request.

    An HTTP failure (``http_status`` with a status) keeps the upstream's answer under
    ``response`` with ``"error": null``, as OpenAI does. Any other failure has
    ``"response": null`` and ``"error": {"code", "message"}``, the code from
    ``ERROR_CODES``.
    """
    response: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    if failure_reason is FailureReason.HTTP_STATUS and status_code is not None:
        response = _response(request_id, status_code, body, upstream_request_id, body_raw)
    else:
        error = {"code": ERROR_CODES[failure_reason], "message": message}
    line = {
        "id": format_id("request", request_id),
        "custom_id": custom_id,
        "response": response,
        "error": error,
    }
    return dumps_compact(line)


def format_input_line(template: RequestTemplate) -> str:
    """An input line (no ``\\n``) that validates back to ``template``.

    Holds ``custom_id``, ``method``, ``url`` and ``body``; never ``endpoint`` or ``api_key``.
    """
    line = {
        "custom_id": template.custom_id,
        "method": template.method,
        "url": template.path,
        "body": _embed(template.body),
    }
    return dumps_compact(line)


def format_result_line(line: ResultLine) -> str:
    """An output line for a completed request, else an error line (no newline)."""
    if line.state is RequestState.COMPLETED:
        return format_output_line(
            line.request_id,
            line.custom_id,
            line.status or 0,
            line.body,
            body_is_json=line.body_is_json,
            body_raw=line.body_raw,
        )
    reason = line.failure_reason or FailureReason.LOST
    return format_error_line(
        line.request_id,
        line.custom_id,
        reason,
        line.failure_message or reason.value,
        line.status,
        line.body,
        body_raw=line.body_raw,
    )


def result_file_bytes(lines: Iterable[ResultLine]) -> int:
    """The size of an output or error file of ``lines``: each formatted line and its ``\\n``,
    in UTF-8, which is exactly what a download of the file sends."""
    return sum(len(format_result_line(line).encode("utf-8")) + 1 for line in lines)
