"""What the command service reads of a request, and what of it an error echoes back.

A body beyond ``max_body_bytes`` is refused with 413 before it is read (``Content-Length``)
or as soon as the bytes read pass the limit (a chunked body); a refusal quotes at most a
short prefix of any input.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.types import ASGIApp, Message

from es_orders.config import Settings
from tests.unit.command_support import ORDER, ApiService, problem

PAYLOAD_TOO_LARGE = "https://es-orders.dev/problems/payload-too-large"
VALIDATION_ERROR = "https://es-orders.dev/problems/validation-error"
DEFAULT_LIMIT = 65_536


@pytest.fixture
def service() -> ApiService:
    return ApiService()


class Upload:
    """An ASGI request body sent in ``chunk``-sized messages, counting what the app reads."""

    def __init__(self, chunk: bytes, chunks: int) -> None:
        self.chunk = chunk
        self.chunks = chunks
        self.read = 0  # body bytes handed to the app

    async def receive(self) -> Message:
        if self.read >= len(self.chunk) * self.chunks:
            await asyncio.sleep(3600)  # the client sent everything: only a disconnect is left
        self.read += len(self.chunk)
        more = self.read < len(self.chunk) * self.chunks
        return {"type": "http.request", "body": self.chunk, "more_body": more}


def call(app: ASGIApp, path: str, headers: list[tuple[bytes, bytes]], upload: Upload) -> Message:
    """POST ``upload`` to ``app`` in-process; the response start message, body attached."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    asyncio.run(asyncio.wait_for(app(scope, upload.receive, send), timeout=30))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return {**start, "body": body}


def test_the_default_limit_is_64_kib_and_the_environment_sets_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().max_body_bytes == DEFAULT_LIMIT
    monkeypatch.setenv("ES_ORDERS_MAX_BODY_BYTES", "1024")
    assert Settings().max_body_bytes == 1024


def test_a_body_at_the_limit_is_read(service: ApiService) -> None:
    body = json.dumps({"id": "1", **ORDER}).encode()
    padded = body + b" " * (DEFAULT_LIMIT - len(body))
    response = service.client.post(
        "/orders", content=padded, headers={"content-type": "application/json"}
    )
    assert response.status_code == 201, response.text


def test_a_body_one_byte_over_the_limit_is_413(service: ApiService) -> None:
    body = json.dumps({"id": "1", **ORDER}).encode()
    padded = body + b" " * (DEFAULT_LIMIT + 1 - len(body))
    response = service.client.post(
        "/orders", content=padded, headers={"content-type": "application/json"}
    )
    refusal = problem(response, 413, PAYLOAD_TOO_LARGE)
    assert refusal["max_body_bytes"] == DEFAULT_LIMIT
    assert service.log.events == []


def test_a_declared_50_mb_body_is_refused_before_any_of_it_is_read(service: ApiService) -> None:
    upload = Upload(b" " * 65_536, chunks=800)  # 50 MiB
    declared = str(len(upload.chunk) * upload.chunks).encode()
    response = call(service.client.app, "/orders/1/price", [(b"content-length", declared)], upload)
    assert response["status"] == 413
    assert json.loads(response["body"])["type"] == PAYLOAD_TOO_LARGE
    assert upload.read == 0


def test_a_chunked_body_is_cut_off_once_it_passes_the_limit(service: ApiService) -> None:
    upload = Upload(b" " * 4096, chunks=800)  # no Content-Length: 3.2 MiB in 4 KiB chunks
    response = call(service.client.app, "/orders/1/price", [], upload)
    assert response["status"] == 413
    assert json.loads(response["body"])["type"] == PAYLOAD_TOO_LARGE
    assert upload.read <= DEFAULT_LIMIT + len(upload.chunk)


def test_a_streamed_body_over_the_limit_is_413_through_http(service: ApiService) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"price": 1, "pad": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    response = service.client.post(
        "/orders/1/price", content=chunks(), headers={"content-type": "application/json"}
    )
    problem(response, 413, PAYLOAD_TOO_LARGE)


def test_a_5_mb_field_is_refused_without_being_echoed(service: ApiService) -> None:
    service.create("1")
    response = service.client.post("/orders/1/product", json={"product_id": "x" * 5_000_000})
    problem(response, 413, PAYLOAD_TOO_LARGE)
    assert len(response.content) < 1000


def test_a_long_value_is_echoed_only_as_a_short_prefix(service: ApiService) -> None:
    service.create("1")
    response = service.client.post("/orders/1/product", json={"product_id": "x" * 60_000})
    [error] = problem(response, 422, VALIDATION_ERROR)["errors"]
    assert error["loc"] == ["body", "product_id"]
    assert error["input"].startswith("x" * 50)
    assert error["input"].endswith("…")
    assert len(error["input"]) <= 101
    assert len(response.content) < 1000


def test_a_long_unknown_member_name_is_echoed_only_as_a_short_prefix(
    service: ApiService,
) -> None:
    service.create("1")
    response = service.client.post("/orders/1/price", json={"price": 2, "y" * 60_000: 1})
    body = problem(response, 422, VALIDATION_ERROR)
    assert len(response.content) < 1000
    assert body["errors"][0]["loc"][1].endswith("…")


def test_a_large_body_in_an_error_is_echoed_as_a_short_prefix(service: ApiService) -> None:
    service.create("1")
    items = [{"n": n} for n in range(3000)]  # the missing price's input is the whole body
    response = service.client.post("/orders/1/price", json={"items": items})
    problem(response, 422, VALIDATION_ERROR)
    assert len(response.content) < 2000


def test_a_long_header_is_echoed_only_as_a_short_prefix(service: ApiService) -> None:
    service.create("1")
    response = service.client.post(
        "/orders/1/price", json={"price": 2}, headers={"If-Match": "z" * 8000}
    )
    problem(response, 422, VALIDATION_ERROR)
    assert len(response.content) < 1000


def test_a_long_unknown_order_id_is_echoed_only_as_a_short_prefix(service: ApiService) -> None:
    response = service.client.get("/orders/" + "q" * 6000)
    problem(response, 404)
    assert len(response.content) < 1000


def test_a_deeply_nested_value_is_echoed_only_as_a_short_prefix(service: ApiService) -> None:
    service.create("1")
    nested = b"[" * 900 + b"]" * 900  # within the parser's depth, and the body limit
    response = service.client.post(
        "/orders/1/price",
        content=b'{"price": ' + nested + b"}",
        headers={"content-type": "application/json"},
    )
    [error] = problem(response, 422, VALIDATION_ERROR)["errors"]
    assert error["input"] == "[" * 100 + "…"
