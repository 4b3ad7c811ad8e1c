"""A stored result as a line of an OpenAI output or error file (``run``, the server)."""

from __future__ import annotations

from collections.abc import Iterable

from fusillade.core.models import FailureReason, RequestState
from fusillade.core.results import format_error_line, format_output_line
from fusillade.store.interface import ResultLine


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
    reason = FailureReason(line.failure_reason or FailureReason.LOST.value)
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
