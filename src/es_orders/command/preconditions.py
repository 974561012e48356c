"""Optimistic concurrency from the request: ``If-Match`` and ``expected_version``.

An order's ETag is its version in quotes (``"7"``), on the query service and here. A
client names the version it saw with ``If-Match: "7"`` or ``expected_version: 7`` in the
body. Parsing is tolerant where it cannot hurt: a weak tag (``W/"7"``) and a bare
``7`` count as ``"7"`` (the version is the whole state, so weak and strong coincide), and
``*`` asks only that the order exists, which every change requires anyway. A list of
several tags, or anything else, is refused (422) rather than guessed at.
"""

from __future__ import annotations

import re

from es_orders.domain.events import MAX_INT

_TAG = re.compile(r'(?:W/)?"(\d{1,19})"|(\d{1,19})')


class InvalidPreconditionError(ValueError):
    """An ``If-Match`` header that does not name one version, or one that contradicts the body."""


def parse_if_match(header: str | None) -> int | None:
    """The version ``If-Match`` names; None when the header is absent or ``*``."""
    if header is None:
        return None
    value = header.strip()
    if value == "*":
        return None
    match = _TAG.fullmatch(value)
    if match is None:
        raise InvalidPreconditionError(
            f'If-Match must name one version as an ETag, like "7"; got {header[:80]!r}'
        )
    version = int(match.group(1) or match.group(2))
    if version > MAX_INT:
        raise InvalidPreconditionError(f"If-Match names a version beyond {MAX_INT}")
    return version


def expected_version(if_match: str | None, in_body: int | None) -> int | None:
    """The version a change is conditional on, from the header or the body; None if neither."""
    from_header = parse_if_match(if_match)
    if from_header is not None and in_body is not None and from_header != in_body:
        raise InvalidPreconditionError(
            f"If-Match names version {from_header} but expected_version is {in_body}"
        )
    return from_header if from_header is not None else in_body
