"""``/ui``: the dashboard, one self-contained page that reads the JSON API in the browser.

The page (``dashboard.html`` beside this module, a package resource) holds its
CSS and script inline and loads nothing from elsewhere, so it needs no build
step and works where there is no internet. It answers without a token; the
script asks for one and sends it on every API call, as any client does. The
Content-Security-Policy allows exactly the page's own script and style (by
their hashes) and requests to this origin.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from importlib import resources

import falcon

__all__ = ["Dashboard", "dashboard_page"]

PAGE = "dashboard.html"


@functools.cache
def dashboard_page() -> tuple[str, str]:
    """The page and its Content-Security-Policy."""
    page = resources.files(__name__).joinpath(PAGE).read_text(encoding="utf-8")
    policy = "; ".join(
        (
            "default-src 'none'",
            "connect-src 'self'",
            f"script-src {_hashes(page, 'script')}",
            f"style-src {_hashes(page, 'style')}",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )
    return page, policy


def _hashes(page: str, tag: str) -> str:
    """The CSP source of every inline ``<tag>`` of ``page``: its SHA-256, as browsers compute it."""
    bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.DOTALL)
    digests = (base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() for body in bodies)
    return " ".join(f"'sha256-{digest}'" for digest in digests) or "'none'"


class Dashboard:
    """``/ui``"""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        page, policy = dashboard_page()
        resp.content_type = "text/html; charset=utf-8"
        resp.text = page
        resp.set_header("Content-Security-Policy", policy)
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.set_header("Referrer-Policy", "no-referrer")
