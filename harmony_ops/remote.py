"""HTTP(S) reads that never follow a redirect (no torch, no Ray: the pipelines' storage layer and the
checkpoint resolver share it).

A redirect can send a request to any host, such as a cloud metadata endpoint, whatever URI was
checked before the request. So HTTP(S) clients are built with `allow_redirects=False`, and a 3xx
answer raises `RedirectRefused` instead of returning the redirect page's bytes as the object.
User storage options (s3fs vocabulary, which may hold credentials) are never given to HTTP hosts.
"""

from __future__ import annotations

from typing import Any

HTTP_PROTOCOLS = ("http", "https")


class RedirectRefused(PermissionError):
    """An HTTP(S) source answered with a redirect; it is not followed (a PermissionError: never retried)."""


async def refuse_redirects(response) -> None:
    """aiohttp's `raise_for_status` hook: raise on a 3xx answer, leave every other status to fsspec."""
    if 300 <= response.status < 400:
        target = response.headers.get("Location")
        url = str(response.url)
        response.release()
        raise RedirectRefused(f"{url} answered {response.status} (redirect to {target!r}); redirects are not followed")


def is_http(uri: str) -> bool:
    return isinstance(uri, str) and uri.split("://", 1)[0].lower() in HTTP_PROTOCOLS and "://" in uri


def http_options() -> dict[str, Any]:
    """fsspec HTTPFileSystem options: passed on to every request (exists, cat, info, get)."""
    return {"allow_redirects": False, "raise_for_status": refuse_redirects}


def client_options(uri: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """The fsspec options for `uri`: the fixed no-redirect options for HTTP(S), else the user's."""
    return http_options() if is_http(uri) else dict(storage_options or {})
