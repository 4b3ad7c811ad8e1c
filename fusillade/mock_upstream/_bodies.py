"""Deterministic OpenAI-shaped answers: the same request body always gets the same answer.

Pure functions of the path and the parsed body. Ids are a digest of the canonical JSON of the
body; ``created`` is a constant; token counts are word counts (whitespace-separated) of the
texts the request and the answer carry, at least 1 for a prompt. Replies echo the last user
text: ``"echo: <text>"``, the text cut at ``ECHO_LIMIT`` characters, and cut to
``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens`` words when given (then
``finish_reason`` is ``length``, or the response is ``incomplete``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
from collections.abc import Callable, Iterable
from typing import Any

CREATED = 1_700_000_000
ECHO_LIMIT = 200
DEFAULT_DIMENSIONS = 8
MAX_DIMENSIONS = 4096
MODERATION_CATEGORIES = ("harassment", "hate", "self-harm", "sexual", "violence")

Json = dict[str, Any]


class BadRequest(Exception):
    """The body is JSON but not a request this endpoint takes (answered 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def digest(body: object) -> str:
    """A short hex digest of the canonical JSON of ``body``."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def text_of(content: object) -> str:
    """The text in a message ``content``: a string, or the text of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, int | float) and not isinstance(content, bool):
        return str(content)  # token ids in a prompt
    if isinstance(content, list):
        return " ".join(filter(None, (text_of(part) for part in content)))
    if isinstance(content, dict):
        if isinstance(content.get("text"), str):
            return str(content["text"])
        return text_of(content.get("content"))
    return ""


def words(text: str) -> int:
    return len(text.split())


def _model(body: Json) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", "model")
    return model


def _limit(body: Json, *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def max_output_tokens(body: object) -> int | None:
    """The output a request allows: ``max_completion_tokens``, ``max_tokens`` or
    ``max_output_tokens`` (a positive integer), else ``None``."""
    if not isinstance(body, dict):
        return None
    return _limit(body, "max_completion_tokens", "max_tokens", "max_output_tokens")


def _echo(text: str, limit: int | None) -> tuple[str, bool]:
    """The reply to ``text`` and whether ``limit`` (in words) cut it."""
    reply = f"echo: {text[:ECHO_LIMIT]}"
    parts = reply.split()
    if limit is not None and len(parts) > limit:
        return " ".join(parts[:limit]), True
    return reply, False


def _usage(prompt: int, completion: int) -> Json:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def chat_completion(body: Json) -> Json:
    model = _model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty array", "messages")
    if not all(isinstance(m, dict) for m in messages):
        raise BadRequest("each message must be an object", "messages")
    users = [m for m in messages if m.get("role") == "user"] or messages
    reply, cut = _echo(
        text_of(users[-1].get("content")), _limit(body, "max_completion_tokens", "max_tokens")
    )
    prompt = max(1, sum(words(text_of(m.get("content"))) for m in messages))
    return {
        "id": f"chatcmpl-{digest(body)}",
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply, "refusal": None},
                "logprobs": None,
                "finish_reason": "length" if cut else "stop",
            }
        ],
        "usage": _usage(prompt, words(reply)),
    }


def completion(body: Json) -> Json:
    model = _model(body)
    prompt_text = text_of(body.get("prompt", ""))
    reply, cut = _echo(prompt_text, _limit(body, "max_tokens"))
    return {
        "id": f"cmpl-{digest(body)}",
        "object": "text_completion",
        "created": CREATED,
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": reply,
                "logprobs": None,
                "finish_reason": "length" if cut else "stop",
            }
        ],
        "usage": _usage(max(1, words(prompt_text)), words(reply)),
    }


def _inputs(value: object) -> list[str]:
    """The items of an embeddings/moderations ``input``: a string, strings, or token lists."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [text_of(value)]  # one prompt of token ids
        return [text_of(v) for v in value]
    raise BadRequest("input must be a string or a non-empty array", "input")


def vector(model: str, text: str, dimensions: int) -> list[float]:
    """A unit vector derived from the model and the text."""
    raw: list[float] = []
    counter = 0
    while len(raw) < dimensions:
        block = hashlib.sha256(
            f"{model}\0{counter}\0{text}".encode("utf-8", "surrogatepass")
        ).digest()
        raw.extend(v / 32767.5 - 1.0 for (v,) in struct.iter_unpack(">H", block))
        counter += 1
    raw = raw[:dimensions]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [round(v / norm, 6) for v in raw]


def embedding(body: Json) -> Json:
    model = _model(body)
    items = _inputs(body.get("input"))
    dimensions = body.get("dimensions", DEFAULT_DIMENSIONS)
    if not isinstance(dimensions, int) or isinstance(dimensions, bool):
        raise BadRequest("dimensions must be an integer", "dimensions")
    if not 1 <= dimensions <= MAX_DIMENSIONS:
        raise BadRequest(f"dimensions must be between 1 and {MAX_DIMENSIONS}", "dimensions")
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(items):
        values = vector(model, item, dimensions)
        encoded: object = values
        if as_base64:
            encoded = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    prompt = max(1, sum(words(item) for item in items))
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }


def response(body: Json) -> Json:
    model = _model(body)
    given = body.get("input")
    if isinstance(given, str):
        items: list[Any] = [{"role": "user", "content": given}]
    elif isinstance(given, list) and given:
        items = given
    else:
        raise BadRequest("input must be a string or a non-empty array", "input")
    users = [i for i in items if isinstance(i, dict) and i.get("role") == "user"] or items
    reply, cut = _echo(text_of(users[-1]), _limit(body, "max_output_tokens"))
    instructions = body.get("instructions")
    prompt = sum(words(text_of(i)) for i in items)
    prompt += words(instructions) if isinstance(instructions, str) else 0
    ident = digest(body)
    return {
        "id": f"resp_{ident}",
        "object": "response",
        "created_at": CREATED,
        "status": "incomplete" if cut else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "error": None,
        "model": model,
        "output": [
            {
                "type": "message",
                "id": f"msg_{ident}",
                "status": "incomplete" if cut else "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": reply, "annotations": []}],
            }
        ],
        "usage": {
            "input_tokens": max(1, prompt),
            "output_tokens": words(reply),
            "total_tokens": max(1, prompt) + words(reply),
        },
    }


def moderation(body: Json) -> Json:
    model = body.get("model") if isinstance(body.get("model"), str) else "omni-moderation-latest"
    results = [
        {
            "flagged": False,
            "categories": dict.fromkeys(MODERATION_CATEGORIES, False),
            "category_scores": dict.fromkeys(MODERATION_CATEGORIES, 0.0),
        }
        for _ in _inputs(body.get("input"))
    ]
    return {"id": f"modr-{digest(body)}", "model": model, "results": results}


ENDPOINTS: dict[str, Callable[[Json], Json]] = {
    "/v1/chat/completions": chat_completion,
    "/v1/completions": completion,
    "/v1/embeddings": embedding,
    "/v1/responses": response,
    "/v1/moderations": moderation,
}


def answer(path: str, body: object) -> Json:
    """The answer of endpoint ``path`` (a key of ``ENDPOINTS``) to ``body``.

    Raises:
        BadRequest: the body is not an object, or not a request the endpoint takes.
    """
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return ENDPOINTS[path](body)


_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    408: ("timeout", "timeout"),
    409: ("invalid_request_error", "conflict"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", "internal_error"),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "timeout"),
}


def error_envelope(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    kind: str | None = None,
) -> Json:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``; ``kind``
    overrides the ``type`` the status implies (a rate limit's is ``requests`` or ``tokens``)."""
    default_kind, default_code = _ERROR_TYPES.get(
        status, ("invalid_request_error" if status < 500 else "server_error", None)
    )
    error = {"message": message, "type": kind or default_kind, "param": param}
    return {"error": {**error, "code": code or default_code}}


DEFAULT_MODEL = "mock-model"


def model_list(models: Iterable[str]) -> Json:
    """``GET /v1/models``: OpenAI's list of model objects; the configured models (those
    with a behaviour of their own), else one ``mock-model`` (any name is answered)."""
    names = sorted(models) or [DEFAULT_MODEL]
    data = [{"id": n, "object": "model", "created": CREATED, "owned_by": "mock"} for n in names]
    return {"object": "list", "data": data}
