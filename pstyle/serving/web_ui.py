"""The web page's files and the headers they are served with (the ingress serves them under /ui/).

The page is a client of the public HTTP API only: it holds the user's API key in sessionStorage and
calls /v1/... like any other client. The files are a fixed list, so no path from a URL ever reaches
the file system. The CSP allows scripts and styles from this origin only (no inline code), images
from this origin and from blob: URLs (the page shows fetched results as blobs), and no framing.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

UI_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def ui_file(name: str) -> tuple[bytes, str] | None:
    """(bytes, media type) of one of the page's files, or None for any other name."""
    if name not in UI_FILES:  # checked before the cache, which then holds the listed files only
        return None
    return _read(name), UI_FILES[name]


@cache
def _read(name: str) -> bytes:
    return files("pstyle.serving").joinpath("ui", name).read_bytes()
