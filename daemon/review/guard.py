"""Who may talk to the review page: this machine, with the token, from the page itself.

The page moves a user's files, so it is guarded like a Jupyter server:

* it binds 127.0.0.1 only, and answers only requests whose ``Host`` is that
  address (or ``localhost``) with its port: a web page elsewhere that points its own
  name at 127.0.0.1 (DNS rebinding) is refused;
* every request carries the per-run token: in the URL the command prints, after
  which a cookie (``HttpOnly``, ``SameSite=Strict``) carries it; without it, 403;
* a request that changes anything (POST) must also carry the page's CSRF token in
  the ``X-CSRF-Token`` header and come from the page's own origin (``Origin``, and
  ``Sec-Fetch-Site`` where the browser sends it).

Files are served by journal row id, never by a path from the request, and only
when the resolved file lies under the output root or a watched folder
(:func:`servable`).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from starlette.datastructures import URL
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK = "127.0.0.1"
SAFE_METHODS = frozenset({"GET", "HEAD"})


@dataclass
class Secrets:
    """The per-run tokens; ``port`` is filled in once the socket is bound."""

    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    port: int = 0

    @property
    def cookie(self) -> str:
        return f"gensift_review_{self.port}"

    def hosts(self) -> set[str]:
        return {f"{LOOPBACK}:{self.port}", f"localhost:{self.port}"}

    def origins(self) -> set[str]:
        return {f"http://{h}" for h in self.hosts()}

    def url(self, path: str = "/") -> str:
        return f"http://{LOOPBACK}:{self.port}{path}?{urlencode({'token': self.token})}"


class Guard:
    """ASGI middleware enforcing the rules of the module doc on every request."""

    def __init__(self, app: ASGIApp, secrets_: Secrets) -> None:
        self.app = app
        self.secrets = secrets_

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response = self.refusal(Request(scope))
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def refusal(self, request: Request) -> Response | None:
        s = self.secrets
        host = request.headers.get("host", "")
        if host not in s.hosts():
            return _forbidden(f"this page answers only at {LOOPBACK}:{s.port}, not {host!r}")
        given = request.query_params.get("token")
        if given is not None:
            if not secrets.compare_digest(given, s.token):
                return _forbidden("wrong token: use the URL gensift review printed")
            if request.method in SAFE_METHODS:  # keep the token out of the address bar
                clean = URL(str(request.url)).remove_query_params("token")
                response = RedirectResponse(clean.path + (f"?{clean.query}" if clean.query else ""))
                response.set_cookie(s.cookie, s.token, httponly=True, samesite="strict", path="/")
                return response
        elif not secrets.compare_digest(request.cookies.get(s.cookie, ""), s.token):
            return _forbidden("no token: open the URL gensift review printed")
        if request.method not in SAFE_METHODS:
            if not secrets.compare_digest(request.headers.get("x-csrf-token", ""), s.csrf):
                return _forbidden("missing or wrong CSRF token")
            if request.headers.get("origin") not in s.origins():
                return _forbidden("cross-origin request refused")
            if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
                return _forbidden("cross-site request refused")
        return None


def _forbidden(why: str) -> Response:
    return PlainTextResponse(f"403 Forbidden: {why}\n", status_code=403)


def servable(path: Path, roots: Iterable[Path]) -> Path | None:
    """``path`` resolved, if it is a regular file under one of ``roots`` (resolved), else None.

    Resolving first means a symlink (or ``..``) that leads out of the roots is refused.
    """
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not real.is_file():
        return None
    for root in roots:
        try:
            base = root.resolve()
        except (OSError, RuntimeError):
            continue
        if real.is_relative_to(base):
            return real
    return None
