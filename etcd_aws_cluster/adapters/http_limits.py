"""Bounded HTTP answers: a peer or a metadata service that streams without end cannot exhaust memory."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import requests

CHUNK = 64 * 1024


class TooLarge(ValueError):
    """The answer's body is longer than the cap."""


def read_capped(response: requests.Response, limit: int) -> None:
    """Read the body of a response requested with stream=True, at most `limit` bytes (decoded).

    Raises TooLarge (and closes the response) when it is longer. Afterwards `.content`, `.text` and `.json()` work
    as for any response.
    """
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        response.close()
        raise TooLarge(f"its answer declares {declared} bytes, more than the {limit} allowed")
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(CHUNK):
        size += len(chunk)
        if size > limit:
            response.close()
            raise TooLarge(f"its answer is longer than the {limit} bytes allowed")
        chunks.append(chunk)
    response._content = b"".join(chunks)
