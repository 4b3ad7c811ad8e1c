"""P8's upstream: answers the canned completion and records when the first request arrives.

A threaded HTTP/1.1 server in the measuring process, so the arrival time and the time the
batch was created are read from the same clock (``time.perf_counter``). ``arm()`` before
creating the batch; ``wait_first(timeout)`` returns the arrival time of the first request
received after it.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from benchmarks.common import CANNED_COMPLETION

_BODY = CANNED_COMPLETION.encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        self.server.arrived(time.perf_counter())
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(_BODY)))
        self.end_headers()
        self.wfile.write(_BODY)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.first: float | None = None
        self.event = threading.Event()
        self.armed = False

    def arrived(self, at: float) -> None:
        with self.lock:
            if self.armed:
                self.armed = False
                self.first = at
                self.event.set()


class RecordingUpstream:
    def __init__(self) -> None:
        self._server = _Server()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}"

    def __enter__(self) -> RecordingUpstream:
        self._thread.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    def arm(self) -> None:
        with self._server.lock:
            self._server.first = None
            self._server.event.clear()
            self._server.armed = True

    def wait_first(self, timeout: float) -> float:
        if not self._server.event.wait(timeout):
            raise TimeoutError(f"no upstream request within {timeout} s")
        assert self._server.first is not None
        return self._server.first
