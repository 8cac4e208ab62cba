"""The web console's files (package data) and how they are answered: one HTML page for every console path (the
page's script reads the path), a few static modules, and headers that allow nothing but this origin."""

from __future__ import annotations

import html
import re
from functools import cache
from importlib import resources

from starlette.responses import Response

_STATIC = re.compile(r"[a-z]+\.(js|css)")
_TYPES = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8"}
# No inline script or style, nothing from another origin, no framing: tenants' data is hostile.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'self'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}


@cache
def _read(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def page(root_path: str) -> Response:
    """The console's page; `root_path` is where the app is mounted (relative links resolve from its /ui/)."""
    base = html.escape(f"{root_path.rstrip('/')}/ui/", quote=True)
    return Response(_read("index.html").replace("{{base}}", base), media_type="text/html; charset=utf-8",
                    headers=HEADERS)


def static(name: str) -> Response:
    """One of the console's modules or its style sheet; 404 for any other name."""
    if not _STATIC.fullmatch(name) or not resources.files(__package__).joinpath("static", name).is_file():
        return Response("not found", status_code=404, media_type="text/plain", headers=HEADERS)
    return Response(_read(name), media_type=_TYPES[name.rsplit(".", 1)[1]], headers=HEADERS)
