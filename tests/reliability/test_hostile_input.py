"""Bad input, the cases tests/server/test_bad_input.py does not have.

That module covers the validation list of api.md, malformed multipart, huge lines,
non-UTF-8 file content, NUL bytes, a 10,000-character ``custom_id``, deeply nested JSON,
wrong content types for uploads, and SQL and CR/LF stored byte for byte in ``custom_id``,
bodies, metadata and file names. Here: the same hostile strings in every *other* string
field (those that are validated rather than stored: ``url``, ``method``, ``endpoint``,
``completion_window``, ``purpose``, ids in paths, cursors and filters in queries), lone
surrogates and out-of-range numbers (which PostgreSQL or Python cannot hold), non-UTF-8
in JSON request bodies and multipart headers, wrong content types for JSON routes,
oversized headers and URLs. Each answers 4xx with the error envelope (never 5xx), stores
nothing, and leaves the server ready; NUL and control characters that are legal JSON are
stored and returned byte for byte.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx
import trio
from helpers import poll_until

GOOD_BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
HOSTILE = [
    "a\r\nX-Injected: 1",
    "'; DROP TABLE requests; --",
    "\u0000",
    "\x1b[31m",
    "x" * 10_000,
]


def line(**fields: Any) -> bytes:
    base: dict[str, Any] = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": GOOD_BODY,
    }
    base.update(fields)
    return json.dumps(base).encode() + b"\n"


def raw_line(text: str) -> bytes:
    return text.encode() + b"\n"


# (case id, file content) -> a 4xx, nothing stored
BAD_FILES: list[tuple[str, bytes]] = [
    *[(f"url-hostile-{i}", line(url=h)) for i, h in enumerate(HOSTILE)],
    *[(f"method-hostile-{i}", line(method=h)) for i, h in enumerate(HOSTILE)],
    ("model-nul", line(body={**GOOD_BODY, "model": "a\u0000b"})),
    ("model-10000-chars", line(body={**GOOD_BODY, "model": "m" * 10_000})),
    ("custom-id-number", line(custom_id=5)),
    ("custom-id-null", line(custom_id=None)),
    ("custom-id-object", line(custom_id={"a": 1})),
    ("custom-id-empty", line(custom_id="")),
    ("body-string", line(body="text")),
    ("lone-surrogate-custom-id", raw_line(
        '{"custom_id": "\\ud800", "method": "POST", "url": "/v1/chat/completions",'
        ' "body": {"model": "m"}}')),
    ("lone-surrogate-model", raw_line(
        '{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",'
        ' "body": {"model": "\\ud800"}}')),
    ("number-out-of-range", raw_line(
        '{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",'
        ' "body": {"model": "m", "x": 1e999}}')),
    ("integer-of-5000-digits", raw_line(
        '{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",'
        ' "body": {"model": "m", "x": ' + "9" * 5000 + "}}")),
    ("nan", raw_line(
        '{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",'
        ' "body": {"model": "m", "x": NaN}}')),
    ("duplicate-keys", raw_line(
        '{"custom_id": "a", "custom_id": "b", "method": "POST",'
        ' "url": "/v1/chat/completions", "body": {"model": "m"}}')),
    ("deeply-nested-body", raw_line(
        '{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",'
        ' "body": {"model": "m", "x": ' + "[" * 100_000 + "]" * 100_000 + "}}")),
    ("latin-1-line", b'{"custom_id": "caf\xe9", "method": "POST", "url": "/v1/chat/completions",'
                     b' "body": {"model": "m"}}\n'),
    ("utf-16", line().decode().encode("utf-16")),
]  # fmt: skip


async def nothing_stored_and_ready(api: httpx.AsyncClient) -> None:
    assert (await api.get("/v1/files")).json()["data"] == []
    assert (await api.get("/v1/batches")).json()["data"] == []
    ready = await api.get("/readyz")
    assert ready.status_code == 200, ready.text


def envelope(response: httpx.Response) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == "invalid_request_error"
    return dict(error)


async def check_all(cases: list[tuple[str, Any]], attempt: Any) -> int:
    """Run ``attempt(case)`` for every case; fail once, naming every case that failed.

    One server serves all the cases of a test (starting one per case would cost a
    second each); each case is still checked on its own.
    """
    failed = []
    for case_id, case in cases:
        try:
            await attempt(case)
        except AssertionError as exc:
            failed.append(f"{case_id}: {str(exc)[:300]}")
    assert not failed, "\n".join(failed)
    return len(cases)


async def test_bad_lines_are_a_4xx_and_store_nothing(api: httpx.AsyncClient) -> None:
    async def attempt(content: bytes) -> None:
        response = await api.post(
            "/v1/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"}
        )
        envelope(response)
        await nothing_stored_and_ready(api)

    await check_all(BAD_FILES, attempt)


BOUNDARY = "b0undary"


def multipart(*parts: bytes) -> bytes:
    sep = b"--" + BOUNDARY.encode()
    return b"".join(sep + b"\r\n" + p + b"\r\n" for p in parts) + sep + b"--\r\n"


def part(disposition: bytes, value: bytes) -> bytes:
    return b"Content-Disposition: form-data; " + disposition + b"\r\n\r\n" + value


FILE = part(b'name="file"; filename="a.jsonl"', line())
PURPOSE = part(b'name="purpose"', b"batch")
# (case id, content type, body) -> a 4xx, nothing stored
BAD_UPLOADS: list[tuple[str, str, bytes]] = [
    *[(f"purpose-hostile-{i}", f"multipart/form-data; boundary={BOUNDARY}",
       multipart(part(b'name="purpose"', h.encode()), FILE)) for i, h in enumerate(HOSTILE)],
    ("purpose-not-utf8", f"multipart/form-data; boundary={BOUNDARY}",
     multipart(part(b'name="purpose"', b"b\xffatch"), FILE)),
    ("field-name-not-utf8", f"multipart/form-data; boundary={BOUNDARY}",
     multipart(PURPOSE, part(b'name="fi\xffle"; filename="a.jsonl"', line()))),
    ("unknown-field-only", f"multipart/form-data; boundary={BOUNDARY}",
     multipart(PURPOSE, part(b'name="other"', b"x"))),
    ("boundary-mismatch", "multipart/form-data; boundary=other", multipart(PURPOSE, FILE)),
    ("text-plain", "text/plain", line()),
    ("form-urlencoded", "application/x-www-form-urlencoded", b"purpose=batch&file=x"),
    ("octet-stream", "application/octet-stream", line()),
]  # fmt: skip


async def test_bad_uploads_are_a_4xx(api: httpx.AsyncClient) -> None:
    async def attempt(case: tuple[str, bytes]) -> None:
        content_type, body = case
        response = await api.post("/v1/files", content=body, headers={"content-type": content_type})
        envelope(response)
        await nothing_stored_and_ready(api)

    await check_all([(c[0], c[1:]) for c in BAD_UPLOADS], attempt)


async def test_odd_but_valid_upload_details_are_stored_byte_for_byte(
    api: httpx.AsyncClient,
) -> None:
    # A non-UTF-8 filename, CRLF line ends, NUL and escapes inside strings, no final newline.
    nasty = "a\u0000b\r\n\u2028\"\\\t\u0007'; DROP TABLE files; --"
    first = {"custom_id": nasty, "method": "POST", "url": "/v1/chat/completions",
             "body": {**GOOD_BODY, "messages": [{"role": "user", "content": nasty}]}}  # fmt: skip
    second = {**first, "custom_id": "plain"}
    content = json.dumps(first).encode() + b"\r\n" + json.dumps(second).encode()
    body = multipart(PURPOSE, part(b'name="file"; filename="r\xe9sum\xe9.jsonl"', content))
    response = await api.post(
        "/v1/files",
        content=body,
        headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    if response.status_code == 200:
        file_id = response.json()["id"]
        downloaded = await api.get(f"/v1/files/{file_id}/content")
        assert [json.loads(x) for x in downloaded.text.split("\n") if x] == [first, second]
    else:
        envelope(response)  # a refused file name is fine, a 5xx is not


def create(**changes: Any) -> dict[str, Any]:
    body = {
        "input_file_id": "file-" + "0" * 32,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    body.update(changes)
    return body


# (case id, raw JSON body, content type) -> a 4xx, no batch
BAD_BATCH_BODIES: list[tuple[str, bytes, str]] = [
    *[(f"endpoint-hostile-{i}", json.dumps(create(endpoint=h)).encode(), "application/json")
      for i, h in enumerate(HOSTILE)],
    *[(f"window-hostile-{i}", json.dumps(create(completion_window=h)).encode(),
       "application/json") for i, h in enumerate(HOSTILE)],
    *[(f"input-file-id-hostile-{i}", json.dumps(create(input_file_id=h)).encode(),
       "application/json") for i, h in enumerate(HOSTILE)],
    ("not-utf8", b'{"input_file_id": "file-\xff", "endpoint": "/v1/chat/completions",'
                 b' "completion_window": "24h"}', "application/json"),
    ("lone-surrogate-metadata", b'{"input_file_id": "file-' + b"0" * 32 + b'", "endpoint":'
     b' "/v1/chat/completions", "completion_window": "24h", "metadata": {"k": "\\ud800"}}',
     "application/json"),
    ("number-out-of-range", b'{"input_file_id": 1e999}', "application/json"),
    ("integer-of-5000-digits", b'{"input_file_id": ' + b"9" * 5000 + b"}", "application/json"),
    ("nan", b'{"input_file_id": NaN}', "application/json"),
    ("deep-metadata", b'{"metadata": {"k": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
     "application/json"),
    ("empty", b"", "application/json"),
    ("text-plain", json.dumps(create()).encode(), "text/plain"),
    ("form-urlencoded", b"input_file_id=x&endpoint=y", "application/x-www-form-urlencoded"),
    ("multipart", multipart(PURPOSE), f"multipart/form-data; boundary={BOUNDARY}"),
]  # fmt: skip


async def test_bad_batch_bodies_are_a_4xx(api: httpx.AsyncClient) -> None:
    async def attempt(case: tuple[bytes, str]) -> None:
        body, content_type = case
        response = await api.post(
            "/v1/batches", content=body, headers={"content-type": content_type}
        )
        envelope(response)
        await nothing_stored_and_ready(api)

    await check_all([(c[0], c[1:]) for c in BAD_BATCH_BODIES], attempt)


ID_PATHS = [
    ("GET", "/v1/files/{}"),
    ("GET", "/v1/files/{}/content"),
    ("DELETE", "/v1/files/{}"),
    ("GET", "/v1/batches/{}"),
    ("POST", "/v1/batches/{}/cancel"),
    ("POST", "/v1/batches/{}/retry"),
    ("GET", "/v1/batches/{}/requests"),
]
HOSTILE_IDS = [*HOSTILE, "file-" + "0" * 31 + "\u00e9", "..", "%ff", "batch_" + "0" * 32 + "'"]


async def test_hostile_ids_in_paths_are_404(api: httpx.AsyncClient) -> None:
    async def attempt(case: tuple[str, str, str]) -> None:
        method, path, hostile = case
        response = await api.request(method, path.format(quote(hostile, safe="")))
        assert response.status_code in (400, 404), response.text[:300]
        envelope(response)

    cases = [(f"{m} {p} {h[:20]!r}", (m, p, h)) for m, p in ID_PATHS for h in HOSTILE_IDS]
    await check_all(cases, attempt)
    await nothing_stored_and_ready(api)


QUERIES = [
    "limit=99999999999999999999999999",
    "limit=-1",
    "limit=1.5",
    "limit=%00",
    "after=%ff",
    "after=%00",
    "after=" + quote("batch_" + "0" * 32 + "\r\nX: y"),
    "after=" + quote("'; DROP TABLE batches; --"),
    "after=" + "a" * 10_000,
    "limit=1&limit=2",
]


async def test_hostile_list_queries_are_400(api: httpx.AsyncClient) -> None:
    async def attempt(case: tuple[str, str]) -> None:
        path, query = case
        response = await api.get(f"{path}?{query}")
        # A repeated parameter may be answered (first or last one wins) or refused.
        if query.startswith("limit=1&") and response.status_code == 200:
            return
        envelope(response)

    cases = [(f"{p}?{q[:40]}", (p, q)) for p in ("/v1/files", "/v1/batches") for q in QUERIES]
    await check_all(cases, attempt)


async def test_hostile_request_filters_are_400(api: httpx.AsyncClient) -> None:
    content = line()
    uploaded = await api.post(
        "/v1/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"}
    )
    assert uploaded.status_code == 200, uploaded.text
    created = await api.post("/v1/batches", json=create(input_file_id=uploaded.json()["id"]))
    assert created.status_code == 200, created.text
    batch_id = created.json()["id"]
    for query in [*QUERIES, "status=" + quote("pending'; --"), "status=%0d%0a", "status=%ff"]:
        response = await api.get(f"/v1/batches/{batch_id}/requests?{query}")
        if query.startswith("limit=1&") and response.status_code == 200:
            continue
        envelope(response)
    assert (await api.get("/readyz")).status_code == 200


async def test_oversized_headers_and_urls_are_refused_not_fatal(api: httpx.AsyncClient) -> None:
    for headers, url in [
        ({"x-big": "h" * 100_000}, "/v1/files"),
        ({f"x-{i}": "v" * 100 for i in range(2000)}, "/v1/files"),
        ({}, "/v1/files/" + "f" * 60_000),
        ({}, "/v1/files?after=" + "a" * 60_000),
    ]:
        try:
            response = await api.get(url, headers=headers)
        except (httpx.RemoteProtocolError, httpx.ReadError):
            continue  # the connection was refused outright: fine
        assert 400 <= response.status_code < 500, response.status_code
    with trio.fail_after(10):
        assert (await api.get("/readyz")).status_code == 200


async def test_hostile_but_legal_values_are_stored_and_returned_byte_for_byte(
    api: httpx.AsyncClient,
) -> None:
    # Legal JSON that PostgreSQL text cannot hold as decoded characters (a lone surrogate,
    # NUL) and strings that must never become SQL or headers, in the model and the body.
    texts = [
        '{"custom_id": "m-crlf", "method": "POST", "url": "/v1/chat/completions",'
        ' "body": {"model": "a\\r\\nX-Injected: 1", "messages": []}}',
        '{"custom_id": "m-sql", "method": "POST", "url": "/v1/chat/completions",'
        ' "body": {"model": "x\'; DROP TABLE requests; --", "messages": []}}',
        '{"custom_id": "m-esc", "method": "POST", "url": "/v1/chat/completions",'
        ' "body": {"model": "\\u001b[31m", "messages": []}}',
        '{"custom_id": "b-surrogate", "method": "POST", "url": "/v1/chat/completions",'
        ' "body": {"model": "m", "messages": [{"role": "user", "content": "\\udfff\\ud800"}]}}',
        '{"custom_id": "b-nul", "method": "POST", "url": "/v1/chat/completions",'
        ' "body": {"model": "m", "messages": [{"role": "user", "content": "a\\u0000b"}]}}',
        '{"custom_id": "b-big", "method": "POST", "url": "/v1/chat/completions",'
        ' "body": {"model": "m", "n": 123456789012345678901234567890, "x": 1.5e300}}',
    ]
    content = "".join(t + "\n" for t in texts).encode()
    uploaded = await api.post(
        "/v1/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"}
    )
    assert uploaded.status_code == 200, uploaded.text
    file_id = uploaded.json()["id"]
    downloaded = await api.get(f"/v1/files/{file_id}/content")
    assert downloaded.status_code == 200, downloaded.text
    assert [json.loads(x) for x in downloaded.text.split("\n") if x] == [
        json.loads(t) for t in texts
    ]

    created = await api.post("/v1/batches", json=create(input_file_id=file_id))
    assert created.status_code == 200, created.text
    batch_id = created.json()["id"]
    answer = await poll_until(
        lambda: api.get(f"/v1/batches/{batch_id}"), lambda r: r.json()["status"] == "completed"
    )
    batch = answer.json()
    got: dict[str, Any] = {}
    for kind in ("output_file_id", "error_file_id"):
        if batch[kind] is not None:
            answer = await api.get(f"/v1/files/{batch[kind]}/content")
            assert answer.status_code == 200, answer.text
            got.update(
                {json.loads(x)["custom_id"]: json.loads(x) for x in answer.text.split("\n") if x}
            )
    assert set(got) == {json.loads(t)["custom_id"] for t in texts}
    listing = await api.get(f"/v1/batches/{batch_id}/requests")
    assert listing.status_code == 200, listing.text
    assert (await api.get("/readyz")).status_code == 200
