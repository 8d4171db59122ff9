"""The console's page shell and static files: public routes, since they hold no data.

Everything a page shows comes from the API routes, each behind ApiKeyDep or AdminDep; the shell
is the same HTML for everyone. Every answer carries a Content-Security-Policy that allows scripts,
styles and connections from this origin only and no inline script at all, and Trusted Types with
no policy, so that no page code can turn a string into markup (a transcript that reads
`<img onerror=...>` stays text). All URLs in the pages are relative, so the console works behind
a proxy that serves the service under a path prefix.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from service.errors import NotFoundError

router = APIRouter(include_in_schema=False)

PAGES = ("try", "live", "review", "quality")
# The console's routes, for tests/test_auth.py's public set: a shell and static files, no data.
UI_ROUTES = frozenset({"/ui", "/ui/", "/ui/{page}", "/ui/static/{name}"})
_ASSET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*\.(js|css|svg)$")
_MEDIA_TYPES = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8", "svg": "image/svg+xml"}

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",  # modules and the audio worklet from /ui/static; no inline script, no eval
        "style-src 'self'",
        "img-src 'self' data:",
        "media-src 'self' blob:",  # audio the page fetched with its token, played from a blob URL
        "connect-src 'self'",  # the API and the Realtime WebSocket of this origin (CSP 3: 'self' covers ws:)
        "base-uri 'none'",
        "form-action 'none'",  # forms are handled by script; none is ever posted by the browser
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "microphone=(self), camera=(), geolocation=()",
    "Cache-Control": "no-cache",
}


@functools.cache
def _static(name: str) -> bytes | None:
    """The bytes of one file of service/ui/static, None when there is no such file."""
    path = resources.files("service.ui").joinpath("static", name)
    return path.read_bytes() if path.is_file() else None


def _page() -> Response:
    shell = _static("index.html")
    assert shell is not None, "service/ui/static/index.html is missing from the package"
    return Response(shell, media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/ui")
async def console_root() -> Response:
    # Relative, so that behind a prefix /prefix/ui goes to /prefix/ui/ (whose relative URLs then resolve).
    return RedirectResponse("ui/", status_code=307, headers=HEADERS)


@router.get("/ui/")
async def console_index() -> Response:
    """The console's first page (Try it)."""
    return _page()


@router.get("/ui/{page}")
async def console_page(page: str) -> Response:
    """The same shell for each page's own URL; the script shows the page the path names."""
    if page not in PAGES:
        raise NotFoundError(f"the console has no page {page[:40]!r}: {', '.join(PAGES)}")
    return _page()


@router.get("/ui/static/{name}")
async def console_asset(name: str) -> Response:
    """One of the console's scripts or style sheets."""
    body = _static(name) if _ASSET_NAME.match(name) else None
    if body is None:
        raise NotFoundError(f"no console file {name[:60]!r}")
    return Response(body, media_type=_MEDIA_TYPES[name.rsplit(".", 1)[1]], headers=HEADERS)
