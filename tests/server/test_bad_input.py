"""Bad input: every case answers 4xx naming the line and field, stores nothing, and the
server stays healthy (the validation list of docs/api.md, and hostile input)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from serverkit import StartServer, chat_line, jsonl, raw_post, wait_status_json

from fusillade.mock_upstream import MockUpstream
from fusillade.server.serve import Running

LIMITS = {"max_line_bytes": 16 * 1024, "max_upload_bytes": 64 * 1024, "max_lines": 50}


@pytest.fixture
async def small(start_server: StartServer, mock_upstream: MockUpstream) -> Running:
    """A server with small upload limits."""
    return await start_server(mock_upstream.url, **LIMITS)


@pytest.fixture
async def api(small: Running) -> AsyncIterator[httpx.AsyncClient]:
    assert small.url is not None
    async with httpx.AsyncClient(base_url=small.url, timeout=30) as c:
        yield c


def line(**fields: Any) -> bytes:
    return json.dumps(fields).encode() + b"\n"


GOOD = chat_line("ok")
BIG_FILE = jsonl(chat_line(f"c{i}", content="y" * 3000) for i in range(30))
MANY_LINES = jsonl(chat_line(f"c{i}") for i in range(60))

# (case id, file content, status, expected (line, param, code) of the first problem)
FILE_CASES: list[tuple[str, bytes, int, tuple[int | None, str | None, str]]] = [
    ("invalid-json", jsonl([GOOD]) + b"{not json\n", 400, (2, None, "invalid_json")),
    (
        "missing-custom-id",
        line(method="POST", url="/v1/chat/completions", body={"model": "m"}),
        400,
        (1, "custom_id", "invalid_request"),
    ),
    ("duplicate-custom-id", jsonl([GOOD, GOOD]), 400, (2, "custom_id", "duplicate_custom_id")),
    (
        "wrong-method",
        line(custom_id="a", method="GET", url="/v1/chat/completions", body={"model": "m"}),
        400,
        (1, "method", "invalid_request"),
    ),
    (
        "url-not-allowed",
        line(custom_id="a", method="POST", url="/v1/images/generations", body={"model": "m"}),
        400,
        (1, "url", "invalid_request"),
    ),
    (
        "body-without-model",
        line(custom_id="a", method="POST", url="/v1/chat/completions", body={"x": 1}),
        400,
        (1, "body.model", "invalid_request"),
    ),
    (
        "body-not-object",
        line(custom_id="a", method="POST", url="/v1/chat/completions", body=[1]),
        400,
        (1, "body", "invalid_request"),
    ),
    ("empty-file", b"", 400, (None, None, "empty_file")),
    ("only-blank-lines", b"\n\n  \n", 400, (None, None, "empty_file")),
    ("not-an-object", b"[1, 2]\n", 400, (1, None, "invalid_json")),
    ("non-utf8", jsonl([GOOD]) + b'{"a": "\xff"}\n', 400, (2, None, "invalid_encoding")),
    ("raw-nul-byte", b'{"custom_id": "a\x00b"}\n', 400, (1, None, "invalid_json")),
    (
        "escaped-nul-in-custom-id",
        line(custom_id="a\u0000b", method="POST", url="/v1/chat/completions", body={"model": "m"}),
        400,
        (1, "custom_id", "invalid_encoding"),
    ),
    (
        "custom-id-10000-chars",
        jsonl([{**GOOD, "custom_id": "x" * 10_000}]),
        400,
        (1, "custom_id", "invalid_request"),
    ),
    (
        "deeply-nested",
        b'{"a": ' + b"[" * 3000 + b"]" * 3000 + b"}\n",
        400,
        (1, None, "invalid_json"),
    ),
    ("huge-line", line(custom_id="a", pad="x" * 20_000), 413, (1, None, "line_too_long")),
    ("too-many-lines", MANY_LINES, 413, (51, None, "too_many_lines")),
    ("file-too-large", BIG_FILE, 413, (None, None, "file_too_large")),
]


async def assert_nothing_stored_and_healthy(api: httpx.AsyncClient) -> None:
    listing = await api.get("/v1/files")
    assert listing.status_code == 200
    assert listing.json()["data"] == []
    ready = await api.get("/readyz")
    assert ready.status_code == 200, ready.text


def assert_envelope(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    error = body["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == "invalid_request_error"
    return error  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("content", "status", "first"), [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES]
)
async def test_bad_file_is_rejected(
    api: httpx.AsyncClient,
    content: bytes,
    status: int,
    first: tuple[int | None, str | None, str],
) -> None:
    response = await api.post(
        "/v1/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"}
    )
    error = assert_envelope(response, status)
    problems = error["errors"]["data"]
    want_line, want_param, want_code = first
    got = problems[0]
    assert (got["line"], got["param"], got["code"]) == (want_line, want_param, want_code)
    assert error["code"] == want_code
    # Every problem is mirrored in the message, with its line.
    for problem in problems:
        assert problem["message"] in error["message"]
        if problem["line"] is not None:
            assert problem["message"].startswith(f"line {problem['line']}: ")
    await assert_nothing_stored_and_healthy(api)


async def test_several_problems_are_listed(api: httpx.AsyncClient) -> None:
    content = b"{bad\n" + line(custom_id="a", method="GET", url="/v1/chat/completions", body={})
    response = await api.post(
        "/v1/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"}
    )
    error = assert_envelope(response, 400)
    found = {(p["line"], p["param"]) for p in error["errors"]["data"]}
    assert {(1, None), (2, "method"), (2, "body.model")} <= found
    await assert_nothing_stored_and_healthy(api)


BOUNDARY = "xyzBOUNDARYxyz"


def multipart(*parts: bytes, close: bool = True) -> bytes:
    body = b"".join(b"--" + BOUNDARY.encode() + b"\r\n" + p + b"\r\n" for p in parts)
    return body + (b"--" + BOUNDARY.encode() + b"--\r\n" if close else b"")


def field(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'Content-Disposition: form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    return disposition.encode() + b"\r\n\r\n" + value


MULTIPART_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
VALID_FILE = jsonl([GOOD])

# (case id, content type, body, param)
FILE_PART = field("file", VALID_FILE, "a.jsonl")
BATCH_PART = field("purpose", b"batch")
LONG_HEADER = b'Content-Disposition: form-data; name="file"\r\nX: ' + b"h" * 10_000 + b"\r\n\r\nx"
REQUEST_CASES: list[tuple[str, str | None, bytes, str | None]] = [
    ("json-instead-of-multipart", "application/json", b'{"purpose": "batch"}', "file"),
    ("no-content-type", None, VALID_FILE, "file"),
    ("multipart-without-boundary", "multipart/form-data", VALID_FILE, "file"),
    ("garbage-multipart", MULTIPART_TYPE, b"this is not multipart at all", "file"),
    (
        "unterminated-multipart",
        MULTIPART_TYPE,
        multipart(BATCH_PART, FILE_PART, close=False),
        "file",
    ),
    ("missing-file", MULTIPART_TYPE, multipart(BATCH_PART), "file"),
    ("missing-purpose", MULTIPART_TYPE, multipart(FILE_PART), "purpose"),
    (
        "purpose-fine-tune",
        MULTIPART_TYPE,
        multipart(field("purpose", b"fine-tune"), FILE_PART),
        "purpose",
    ),
    ("two-files", MULTIPART_TYPE, multipart(BATCH_PART, FILE_PART, FILE_PART), "file"),
    ("oversized-part-header", MULTIPART_TYPE, multipart(LONG_HEADER), "file"),
]


@pytest.mark.parametrize(
    ("content_type", "body", "param"),
    [c[1:] for c in REQUEST_CASES],
    ids=[c[0] for c in REQUEST_CASES],
)
async def test_bad_upload_request_is_rejected(
    api: httpx.AsyncClient, content_type: str | None, body: bytes, param: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = await api.post("/v1/files", content=body, headers=headers)
    error = assert_envelope(response, 400)
    assert error["param"] == param
    await assert_nothing_stored_and_healthy(api)


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "chunked"])
async def test_upload_over_the_body_limit_is_413(
    api: httpx.AsyncClient, small: Running, announced: bool
) -> None:
    assert small.url is not None
    chunk = b"x" * 65536
    count = (LIMITS["max_upload_bytes"] + 2 * 1024 * 1024) // len(chunk) + 1
    head = b"--" + BOUNDARY.encode() + b'\r\nContent-Disposition: form-data; name="file"\r\n\r\n'
    headers = [("content-type", MULTIPART_TYPE)]
    if announced:
        headers.append(("content-length", str(len(head) + count * len(chunk))))
    status, body = await raw_post(small.url, "/v1/files", headers, [head, *[chunk] * count])
    assert status == 413, body
    assert json.loads(body)["error"]["code"] in ("request_too_large", "file_too_large")
    await assert_nothing_stored_and_healthy(api)


async def test_json_body_over_the_request_limit_is_413(small: Running) -> None:
    assert small.url is not None
    body = json.dumps({"metadata": {"k": "v" * (2 * 1024 * 1024)}}).encode()
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    status, answer = await raw_post(small.url, "/v1/batches", headers, [body])
    assert status == 413, answer
    assert json.loads(answer)["error"]["code"] == "request_too_large"


@pytest.fixture
async def input_file(api: httpx.AsyncClient) -> str:
    response = await api.post(
        "/v1/files", files={"file": ("in.jsonl", jsonl([GOOD]))}, data={"purpose": "batch"}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def create_body(file_id: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


# (case id, changes to a valid body, status, param)
BATCH_CASES: list[tuple[str, dict[str, Any], int, str | None]] = [
    ("endpoint-not-allowed", {"endpoint": "/v1/images/generations"}, 400, "endpoint"),
    ("endpoint-differs-from-lines", {"endpoint": "/v1/embeddings"}, 400, "endpoint"),
    ("window-not-allowed", {"completion_window": "48h"}, 400, "completion_window"),
    ("window-garbage", {"completion_window": "soon"}, 400, "completion_window"),
    ("too-much-metadata", {"metadata": {f"k{i}": "v" for i in range(17)}}, 400, "metadata"),
    ("metadata-key-too-long", {"metadata": {"k" * 65: "v"}}, 400, "metadata"),
    ("metadata-value-too-long", {"metadata": {"k": "v" * 513}}, 400, "metadata"),
    ("metadata-nul", {"metadata": {"k": "a\u0000b"}}, 400, "metadata"),
    ("metadata-not-strings", {"metadata": {"k": 1}}, 400, "metadata"),
    ("missing-endpoint", {"endpoint": None}, 400, None),
    ("input-file-wrong-type", {"input_file_id": 5}, 400, "input_file_id"),
    ("malformed-input-file-id", {"input_file_id": "file-xyz"}, 404, None),
    ("unknown-input-file-id", {"input_file_id": "file-" + "0" * 32}, 404, None),
]


@pytest.mark.parametrize(
    ("changes", "status", "param"), [c[1:] for c in BATCH_CASES], ids=[c[0] for c in BATCH_CASES]
)
async def test_bad_batch_request_is_rejected(
    api: httpx.AsyncClient, input_file: str, changes: dict[str, Any], status: int, param: str | None
) -> None:
    response = await api.post("/v1/batches", json=create_body(input_file, **changes))
    error = assert_envelope(response, status)
    if param is not None:
        assert error["param"] == param
    listing = await api.get("/v1/batches")
    assert listing.json()["data"] == []


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", b'"a string"', b"null", b"[" * 5000 + b"]" * 5000],
    ids=["malformed", "array", "string", "null", "deeply-nested"],
)
async def test_batch_body_that_is_not_an_object(api: httpx.AsyncClient, body: bytes) -> None:
    response = await api.post(
        "/v1/batches", content=body, headers={"content-type": "application/json"}
    )
    assert_envelope(response, 400)


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=101",
        "limit=abc",
        "after=batch_zzz",
        "after=file-" + "0" * 32,
        "after=batch_" + "0" * 32,
    ],
)
async def test_bad_list_query(api: httpx.AsyncClient, query: str) -> None:
    response = await api.get(f"/v1/batches?{query}")
    error = assert_envelope(response, 400)
    assert error["param"] in ("limit", "after")


async def test_bad_requests_query(api: httpx.AsyncClient, input_file: str) -> None:
    created = await api.post("/v1/batches", json=create_body(input_file))
    batch_id = created.json()["id"]
    for query in ["status=nope", "limit=0", "after=batch_req_" + "0" * 32, "after=x"]:
        response = await api.get(f"/v1/batches/{batch_id}/requests?{query}")
        assert_envelope(response, 400)


async def test_unknown_route_and_wrong_method(api: httpx.AsyncClient) -> None:
    assert_envelope(await api.get("/v1/nope"), 404)
    assert_envelope(await api.put("/v1/batches"), 405)
    assert_envelope(await api.delete("/v1/batches/batch_" + "0" * 32), 405)


async def test_control_characters_and_sql_are_stored_byte_for_byte(
    api: httpx.AsyncClient, small: Running, mock_upstream: MockUpstream
) -> None:
    nasty = "a\r\nX-Injected: 1\r\n\r\n'; DROP TABLE requests; --\t\u0007\u001b[31m\u2028é𝄞\""
    lines = [
        {**chat_line(nasty, content=nasty), "custom_id": nasty},
        chat_line("Robert'); DROP TABLE files;--", content="$$; SELECT 1; $$"),
    ]
    content = jsonl(lines)
    uploaded = await api.post(
        "/v1/files",
        files={"file": (nasty.replace('"', "") + ".jsonl", content)},
        data={"purpose": "batch"},
    )
    assert uploaded.status_code == 200, uploaded.text
    file_id = uploaded.json()["id"]
    downloaded = await api.get(f"/v1/files/{file_id}/content")
    # split on "\n" only: str.splitlines() would also split at U+2028 inside a string
    assert [json.loads(x) for x in downloaded.text.split("\n")[:-1]] == lines

    metadata = {nasty[:60]: nasty, "sql": "x' OR '1'='1"}
    created = await api.post("/v1/batches", json=create_body(file_id, metadata=metadata))
    assert created.status_code == 200, created.text
    batch_id = created.json()["id"]
    assert created.json()["metadata"] == metadata
    batch = await wait_status_json(api, batch_id, "completed")
    assert batch["metadata"] == metadata
    output = await api.get(f"/v1/files/{batch['output_file_id']}/content")
    got = {json.loads(x)["custom_id"] for x in output.text.split("\n")[:-1]}
    assert got == {nasty, "Robert'); DROP TABLE files;--"}
    # The custom id never became a header: the upstream saw it only in the body.
    headers = mock_upstream.stats.last_headers
    assert "x-injected" not in headers
    requests = await api.get(f"/v1/batches/{batch_id}/requests")
    assert {r["custom_id"] for r in requests.json()["data"]} == got


async def test_server_settings_are_honoured(
    start_server: StartServer, mock_upstream: MockUpstream
) -> None:
    running = await start_server(
        mock_upstream.url, completion_windows=("24h", "1h"), allowed_endpoints=("/v1/embeddings",)
    )
    assert running.url is not None
    async with httpx.AsyncClient(base_url=running.url) as c:
        chat = await c.post(
            "/v1/files", files={"file": ("a.jsonl", jsonl([GOOD]))}, data={"purpose": "batch"}
        )
        assert chat.status_code == 400
        assert chat.json()["error"]["param"] == "url"
        emb = {
            "custom_id": "e",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "m", "input": "hi"},
        }
        ok = await c.post(
            "/v1/files", files={"file": ("a.jsonl", jsonl([emb]))}, data={"purpose": "batch"}
        )
        assert ok.status_code == 200
        body = create_body(ok.json()["id"], endpoint="/v1/embeddings", completion_window="1h")
        created = await c.post("/v1/batches", json=body)
        assert created.status_code == 200, created.text
        assert created.json()["completion_window"] == "1h"
        assert created.json()["expires_at"] - created.json()["created_at"] in (3599, 3600, 3601)


def test_cases_are_unique() -> None:
    for cases in (FILE_CASES, REQUEST_CASES, BATCH_CASES):
        ids = [c[0] for c in cases]
        assert len(ids) == len(set(ids))
