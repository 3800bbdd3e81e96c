"""Loopback servers for tests on 127.0.0.1 (a free port), each in a background thread: an ASGI app under
uvicorn, or a stdlib HTTP server whose every GET is answered by a plain function."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = Callable[[BaseHTTPRequestHandler], None]


class ByteBudgetSpent(Exception):
    """Raised by an answer that has sent its byte budget (``tests.bounds.SERVER_BYTE_BUDGET``): the server
    hangs up, so an endless answer ends even when the client under test no longer stops reading."""


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Yield the server's base URL (``http://127.0.0.1:<port>``); stop the server on exit."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the loopback server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


class AnswerServer(ThreadingHTTPServer):
    """A stdlib HTTP server on 127.0.0.1 that answers every GET with ``answer(request)``; started at once.

    HTTP/1.0: a body ends when the connection closes, so an answer may stream without a length (endless
    bodies are easy). A client that hangs up mid-answer is not an error of the server.
    """

    daemon_threads = True

    def __init__(self, answer: Answer) -> None:
        super().__init__(("127.0.0.1", 0), _AnswerHandler)
        self.answer = answer
        #: Bytes the answers counted as sent (for answers that track it).
        self.sent = 0
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=10)


class _AnswerHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server: AnswerServer

    def do_GET(self) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ByteBudgetSpent):
            self.server.answer(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def answering(answer: Answer) -> Iterator[AnswerServer]:
    """An :class:`AnswerServer` for the block; stopped on exit."""
    server = AnswerServer(answer)
    try:
        yield server
    finally:
        server.close()


#: What a recording server saw: (path, headers) of each request, in order.
Seen = list[tuple[str, dict[str, str]]]


@contextmanager
def recording(body: bytes = b"ok", content_type: str = "text/plain") -> Iterator[tuple[AnswerServer, Seen]]:
    """An :class:`AnswerServer` that answers every GET with ``body`` and records each request's path and
    headers: a host that must (or must not) be reached."""
    seen: Seen = []

    def answer(request: BaseHTTPRequestHandler) -> None:
        seen.append((request.path, dict(request.headers.items())))
        request.send_response(200)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    with answering(answer) as server:
        yield server, seen


def send_json(
    request: BaseHTTPRequestHandler, body: Any, status: int = 200, content_type: str = "application/json"
) -> None:
    """Answer ``request`` with ``body`` as JSON (with its length)."""
    data = json.dumps(body).encode()
    request.send_response(status)
    request.send_header("Content-Type", content_type)
    request.send_header("Content-Length", str(len(data)))
    request.end_headers()
    request.wfile.write(data)
