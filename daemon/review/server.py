"""``gensift review``: the page's routes, and the loopback server that serves them.

Starlette on uvicorn, one Jinja2 template and one script with no build step. Every
route is behind :class:`~gensift.daemon.review.guard.Guard`; files are addressed by
journal row id. The journal is opened per request (SQLite in WAL mode: the running
daemon keeps writing while the page reads and acts).

Routes: ``/`` (to the review queue), ``/queue/{name}?page=N`` (a page of a queue),
``/thumb/{id}`` and ``/image/{id}`` (the file placed by journal row ``id``),
``/api/item/{id}`` (its details and generation parameters), ``POST /api/act`` and
``POST /api/undo`` (:mod:`actions`), ``/api/counts``.
"""

from __future__ import annotations

import json
import mimetypes
import os
import socket
import threading
import webbrowser
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger
from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from gensift.daemon.config import Settings
from gensift.daemon.review.actions import VERBS, ActionError, Reviewer
from gensift.daemon.review.guard import LOOPBACK, Guard, Secrets, servable
from gensift.daemon.review.queues import QUEUES, Queues
from gensift.daemon.review.thumbs import Thumbnails
from gensift.daemon.routing.audit import LivePrecision, live_precision, recorded_target
from gensift.daemon.routing.fileops import shown
from gensift.daemon.routing.journal import REVIEW_RUN, Entry, Journal, new_run_id
from gensift.daemon.routing.records import REJECTED_DIR, REVIEW_DIR
from gensift.models.genparams import read_parameters

HERE = Path(__file__).parent


class RetrainJob:
    """One ``gensift retrain`` at a time, run from the page in a thread, its output kept."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.stage: str | None = None
        self.lines: list[str] = []
        self.result: dict[str, Any] | None = None
        self.error: str | None = None

    def start(self, stage: str) -> bool:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return False
            self.stage, self.lines, self.result, self.error = stage, [], None, None
            self._thread = threading.Thread(
                target=self._run, args=(stage,), name="review-retrain", daemon=True
            )
            self._thread.start()
            return True

    def status(self) -> dict[str, Any]:
        running = self._thread is not None and self._thread.is_alive()
        return {
            "running": running,
            "stage": self.stage,
            "lines": list(self.lines[-200:]),
            "result": self.result,
            "error": self.error,
        }

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, stage: str) -> None:
        from gensift.daemon.commands.retrain import format_result, retrain
        from gensift.models.errors import InputError, RuntimeProblem

        me = threading.get_ident()
        sink = logger.add(
            lambda m: self.lines.append(str(m).rstrip()),
            level="INFO",
            format="{message}",
            filter=lambda record: record["thread"].id == me,
        )
        out = _Lines(self.lines)
        try:
            result = retrain(self.settings, stage, out=out)  # type: ignore[arg-type]
            format_result(result, stage, out)  # type: ignore[arg-type]
            self.result = {
                "published": result.published,
                "passed": bool(result.verdict.get("passed")),
                "before": None if result.accuracy_before is None else str(result.accuracy_before),
                "after": None if result.accuracy_after is None else str(result.accuracy_after),
            }
        except (InputError, RuntimeProblem) as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - the page shows it; the server goes on
            logger.exception("retrain from the review page failed")
            self.error = f"retrain failed: {exc}"
        finally:
            logger.remove(sink)


class _Lines:
    """A text stream that keeps whole lines in a list (what the page polls)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self._part = ""

    def write(self, text: str) -> int:
        self._part += text
        *whole, self._part = self._part.split("\n")
        self.lines.extend(whole)
        return len(text)

    def flush(self) -> None:
        pass


@dataclass
class Review:
    """Everything one page server knows: settings, tokens, queues, the actor."""

    settings: Settings
    secrets: Secrets
    queues: Queues
    reviewer: Reviewer
    thumbs: Thumbnails
    retraining: RetrainJob

    def open_journal(self) -> Journal:
        return Journal.open(self.settings.journal.path)

    def classes(self) -> list[str]:
        return known_classes(self.settings, self.open_journal)

    def live(self) -> list[LivePrecision]:
        """Live precision per class from the audit answers (routing/audit.py)."""
        target = recorded_target(self.settings.stages.feature.checkpoint)
        with self.open_journal() as journal:
            return live_precision(journal, target)

    def roots(self) -> list[Path]:
        """The folders files may be served from (resolved by :func:`servable`)."""
        root = self.settings.output.root
        roots = [root, *self.settings.watch.paths]
        with suppress(OSError):  # a class folder that is a link gensift follows (folders.py)
            roots += [d.resolve() for d in root.iterdir() if d.is_symlink() and d.is_dir()]
        return roots


def known_classes(settings: Settings, open_journal: Callable[[], Journal]) -> list[str]:
    """The feature classes: those the model scored and the class folders on disk, sorted."""
    names: set[str] = set()
    with open_journal() as journal:
        names.update(journal.feature_classes())
    with suppress(OSError):
        names.update(
            d.name
            for d in settings.output.root.iterdir()
            if d.is_dir() and not d.name.startswith(("_", "."))
        )
    return sorted(names)


def build_review(settings: Settings, secrets_: Secrets | None = None) -> Review:
    secrets_ = secrets_ or Secrets()

    def open_journal() -> Journal:
        return Journal.open(settings.journal.path)

    queues = Queues(open_journal, seed=secrets_.token)
    reviewer = Reviewer(
        settings.output,
        open_journal,
        new_run_id(REVIEW_RUN),
        lambda: known_classes(settings, open_journal),
    )
    cache = settings.journal.path.parent / "thumbnails"
    return Review(settings, secrets_, queues, reviewer, Thumbnails(cache), RetrainJob(settings))


def create_app(review: Review) -> Starlette:
    templates = Jinja2Templates(directory=str(HERE / "templates"))

    async def home(request: Request) -> Response:
        return RedirectResponse("/queue/review")

    async def queue(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in QUEUES:
            return PlainTextResponse(f"no queue {name!r}\n", status_code=404)
        try:
            number = int(request.query_params.get("page", "1"))
        except ValueError:
            number = 1
        page, counts, classes, live = await run_in_threadpool(
            lambda: (
                review.queues.page(name, number),
                review.queues.counts(),
                review.classes(),
                review.live(),
            )
        )
        items = [item_json(e) for e in page.items]
        return templates.TemplateResponse(
            request,
            "queue.html",
            {
                "queue": name,
                "queues": QUEUES,
                "counts": counts,
                "page": page,
                "items": items,
                "classes": classes,
                "live": live,
                "below": [x for x in live if x.below_target],
                "state": _script_json(
                    {
                        "queue": name,
                        "csrf": review.secrets.csrf,
                        "classes": classes,
                        "items": items,
                        "verbs": VERBS,
                    }
                ),
            },
        )

    def placed_file(entry_id: int) -> tuple[Entry, Path] | Response:
        with review.open_journal() as journal:
            try:
                entry = journal.get(entry_id)
            except KeyError:
                return PlainTextResponse("no such item\n", status_code=404)
        if entry.destination is None:
            return PlainTextResponse("that row placed no file\n", status_code=404)
        real = servable(entry.destination, review.roots())
        if real is None:
            return PlainTextResponse(
                "403 Forbidden: not a file under the output root or a watched folder\n",
                status_code=403,
            )
        return entry, real

    async def thumb(request: Request) -> Response:
        found = await run_in_threadpool(placed_file, request.path_params["id"])
        if isinstance(found, Response):
            return found
        entry, real = found
        try:
            path = await run_in_threadpool(review.thumbs.get, real, entry.sha256)
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError) as exc:
            return PlainTextResponse(f"cannot read the image: {exc}\n", status_code=415)
        return FileResponse(path, media_type="image/jpeg", headers=_PRIVATE_CACHE)

    async def image(request: Request) -> Response:
        found = await run_in_threadpool(placed_file, request.path_params["id"])
        if isinstance(found, Response):
            return found
        try:  # read now: the file may be moved by an action at any moment
            data = await run_in_threadpool(found[1].read_bytes)
        except OSError:
            return PlainTextResponse("the file moved; reload\n", status_code=404)
        media = mimetypes.guess_type(found[1].name)[0] or "application/octet-stream"
        return Response(data, media_type=media, headers=_PRIVATE_CACHE)

    async def item(request: Request) -> Response:
        found = await run_in_threadpool(placed_file, request.path_params["id"])
        if isinstance(found, Response):
            return found
        entry, real = found
        data = item_json(entry)
        data["parameters"] = await run_in_threadpool(_parameters, real)
        return JSONResponse(data)

    async def act(request: Request) -> Response:
        body = await _json_body(request)
        if isinstance(body, Response):
            return body
        try:
            entry_id = int(body["id"])
            verb = body["verb"]
            queue_name = body.get("queue", "recent")
            if verb not in VERBS or queue_name not in QUEUES:
                raise ValueError(verb)
        except (KeyError, TypeError, ValueError):
            return _bad("expected {id, verb, queue, class}")
        try:
            done = await run_in_threadpool(
                review.reviewer.act, entry_id, verb, queue_name, body.get("class")
            )
        except (ActionError, KeyError) as exc:
            return JSONResponse({"error": _message(exc)}, status_code=409)
        return JSONResponse(done.to_json())

    async def undo(request: Request) -> Response:
        body = await _json_body(request)
        if isinstance(body, Response):
            return body
        try:
            label_id = int(body["label"])
        except (KeyError, TypeError, ValueError):
            return _bad("expected {label}")
        try:
            done = await run_in_threadpool(review.reviewer.undo, label_id)
        except (ActionError, KeyError) as exc:
            return JSONResponse({"error": _message(exc)}, status_code=409)
        return JSONResponse(done.to_json())

    async def stats(request: Request) -> Response:
        live = await run_in_threadpool(review.live)
        return JSONResponse({"live_precision": [x.to_json() for x in live]})

    async def retrain_start(request: Request) -> Response:
        body = await _json_body(request)
        if isinstance(body, Response):
            return body
        stage = body.get("stage", "feature")
        if stage not in ("quality", "feature"):
            return _bad("stage must be quality or feature")
        if not review.retraining.start(stage):
            return JSONResponse({"error": "a retrain is already running"}, status_code=409)
        return JSONResponse(review.retraining.status())

    async def retrain_status(request: Request) -> Response:
        return JSONResponse(review.retraining.status())

    async def counts(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(review.queues.counts))

    app = Starlette(
        routes=[
            Route("/", home),
            Route("/queue/{name}", queue),
            Route("/thumb/{id:int}", thumb),
            Route("/image/{id:int}", image),
            Route("/api/item/{id:int}", item),
            Route("/api/act", act, methods=["POST"]),
            Route("/api/undo", undo, methods=["POST"]),
            Route("/api/counts", counts),
            Route("/api/stats", stats),
            Route("/api/retrain", retrain_start, methods=["POST"]),
            Route("/api/retrain", retrain_status, methods=["GET"]),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ]
    )
    app.add_middleware(Guard, secrets_=review.secrets)
    return app


_PRIVATE_CACHE = {"Cache-Control": "private, max-age=3600"}


def item_json(entry: Entry) -> dict[str, Any]:
    folder = entry.folder
    return {
        "id": entry.id,
        "name": shown(entry.destination.name if entry.destination else entry.source.name),
        "folder": folder,
        "time": entry.time,
        "action": entry.action,
        "reason": entry.reason,
        "class": entry.label,
        "probability": entry.probability,
        "probabilities": entry.probabilities,
        "checkpoints": entry.checkpoints,
        "actor": entry.actor,
        "uncertain": folder == REVIEW_DIR,
        "rejected": folder == REJECTED_DIR,
        "sha256": entry.sha256,
    }


def _script_json(value: object) -> str:
    """JSON safe inside a <script> element: no ``</script>`` or ``<!--`` in file names."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _parameters(path: Path) -> dict[str, Any] | None:
    try:
        with Image.open(path) as img:
            params = read_parameters(img)
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return None if params is None else params.to_json()


async def _json_body(request: Request) -> dict[str, Any] | Response:
    try:
        body = await request.json()
    except ValueError:
        return _bad("the body is not JSON")
    return body if isinstance(body, dict) else _bad("the body is not a JSON object")


def _bad(why: str) -> Response:
    return JSONResponse({"error": why}, status_code=400)


def _message(exc: BaseException) -> str:
    return str(exc.args[0]) if exc.args else type(exc).__name__


# -- serving ---------------------------------------------------------------------------


def bind(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1 (``port`` 0: a free one the OS picks)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if os.name != "nt":  # on Windows this would let two servers share the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class PageServer:
    """uvicorn serving one :class:`Review` on a bound loopback socket, in a thread or not."""

    def __init__(self, review: Review, port: int = 0) -> None:
        import uvicorn

        self.sock = bind(port)
        review.secrets.port = self.sock.getsockname()[1]
        review.queues.refresh()  # read the journal now, not on the first page's clock
        self.review = review
        config = uvicorn.Config(
            create_app(review), log_level="warning", access_log=False, lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.review.secrets.url()

    def serve(self) -> None:
        """Serve until Ctrl+C (or :meth:`stop`)."""
        self.server.run(sockets=[self.sock])

    def start(self) -> PageServer:
        """Serve in a background thread (tests, the demo); returns once it answers."""
        self.server.config.install_signal_handlers = False  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self.serve, name="review-page", daemon=True)
        self._thread.start()
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the review page server did not start")
            threading.Event().wait(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.sock.close()


def run_review(
    settings: Settings, *, port: int = 0, open_browser: bool = True, out: Any = None
) -> int:
    """``gensift review``: check the journal opens, serve, print the URL, open a browser."""
    with Journal.open(settings.journal.path):  # a clear JournalError now, not on the page
        pass
    try:
        server = PageServer(build_review(settings), port)
    except OSError as exc:
        from gensift.models.errors import InputError

        raise InputError(f"cannot listen on {LOOPBACK}:{port}: {exc.strerror or exc}") from None
    url = server.url
    print(f"gensift review: {url}", file=out, flush=True)
    print("  (the address holds this run's token; Ctrl+C stops the page)", file=out, flush=True)
    logger.info("review page at {}:{}", LOOPBACK, server.review.secrets.port)
    if open_browser:
        threading.Timer(0.5, webbrowser.open, args=(url,)).start()
    with suppress(KeyboardInterrupt):  # uvicorn shuts down, then passes Ctrl+C on: the end
        server.serve()
    print("gensift review: stopped", file=out, flush=True)
    return 0


__all__: Sequence[str] = ["PageServer", "build_review", "create_app", "run_review"]
