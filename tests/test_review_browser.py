"""The review page in a real browser: Debian's Chromium driven by Playwright, against the
real uvicorn server on a loopback port, acting on files through the real router.

Each test saves a screenshot under its tmp_path (``screens/``); set GENSIFT_SCREENSHOTS
to a folder to keep them. Skipped with the reason where no Chromium can be found,
unless GENSIFT_REQUIRE_BROWSER=1 (``.ci/run`` sets it once it has installed one).
"""

from __future__ import annotations

import hashlib
import http.client
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from reviewkit import Scene, make_scene
from watchkit import wait_for

from gensift.daemon.commands.labels import current_labels
from gensift.daemon.review.server import PageServer, build_review
from gensift.daemon.routing.journal import Journal


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Scene, PageServer]]:
    scene = make_scene(tmp_path, review=6, moved=4, rejected=3)
    server = PageServer(build_review(scene.settings)).start()
    try:
        yield scene, server
    finally:
        server.stop()


@pytest.fixture
def page(browser: object, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})  # type: ignore[attr-defined]
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    screens = Path(os.environ.get("GENSIFT_SCREENSHOTS") or tmp_path / "screens")
    screens.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(screens / f"{request.node.name}.png"))
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def base(server: PageServer) -> str:
    return f"http://127.0.0.1:{server.review.secrets.port}"


def open_queue(page: object, server: PageServer, queue: str) -> None:
    response = page.goto(f"{base(server)}/queue/{queue}?token={server.review.secrets.token}")  # type: ignore[attr-defined]
    assert response.status == 200
    page.wait_for_function("window.gensift && window.gensift.ready")  # type: ignore[attr-defined]


def test_the_page_opens_only_with_the_token(served: tuple[Scene, PageServer], page: object) -> None:
    _, server = served
    response = page.goto(f"{base(server)}/queue/review")  # type: ignore[attr-defined]
    assert response.status == 403
    response = page.goto(f"{base(server)}/queue/review?token=wrong")  # type: ignore[attr-defined]
    assert response.status == 403
    open_queue(page, server, "review")
    assert "token" not in page.url  # type: ignore[attr-defined]  # the cookie carries it
    assert page.locator(".tile").count() == 6  # type: ignore[attr-defined]
    page.keyboard.press("?")  # type: ignore[attr-defined]
    assert page.locator("#help").is_visible()  # type: ignore[attr-defined]
    page.keyboard.press("Escape")  # type: ignore[attr-defined]


def test_pressing_2_moves_the_file_to_class_2_and_z_puts_it_back_byte_identical(
    served: tuple[Scene, PageServer], page: object
) -> None:
    scene, server = served
    open_queue(page, server, "review")
    placed = scene.root / "_review" / "uncertain_0.png"  # the smallest margin: first
    digest = sha(placed)
    page.keyboard.press("2")  # type: ignore[attr-defined]  # classes cat, dog, fox: 2 is dog
    moved = scene.root / "dog" / "uncertain_0.png"
    wait_for(moved.exists, timeout=30, what="the file in dog/")
    assert not placed.exists() and sha(moved) == digest
    page.wait_for_selector(".tile.acted")  # type: ignore[attr-defined]
    with Journal.open(scene.journal) as journal:
        row = journal.last_from(placed)
        assert row is not None and (row.actor, row.label, row.destination) == (
            "human",
            "dog",
            moved,
        )
        assert current_labels(journal.labels())[(digest, "feature")].label == "dog"

    page.keyboard.press("z")  # type: ignore[attr-defined]
    wait_for(placed.exists, timeout=30, what="the file back in _review/")
    assert sha(placed) == digest and not moved.exists()
    page.wait_for_selector(".tile.acted", state="detached")  # type: ignore[attr-defined]
    with Journal.open(scene.journal) as journal:
        assert (digest, "feature") not in current_labels(journal.labels())


def test_x_on_an_audit_item_quarantines_it_and_counts_as_an_audit_label(
    served: tuple[Scene, PageServer], page: object
) -> None:
    scene, server = served
    open_queue(page, server, "audit")
    first = page.locator(".tile").first.get_attribute("data-id")  # type: ignore[attr-defined]
    with Journal.open(scene.journal) as journal:
        entry = journal.get(int(first))
    assert entry.destination is not None
    page.keyboard.press("x")  # type: ignore[attr-defined]
    rejected = scene.root / "_rejected" / entry.destination.name
    wait_for(rejected.exists, timeout=30, what="the audited file in _rejected/")
    assert sha(rejected) == entry.sha256
    # the label is written once the move is recorded; the page marks the tile when done
    page.wait_for_selector(".tile.acted")  # type: ignore[attr-defined]
    with Journal.open(scene.journal) as journal:
        label = current_labels(journal.labels())[(entry.sha256, "quality")]
    assert (label.label, label.source) == ("reject", "audit")


def test_selecting_several_acts_on_all_of_them(
    served: tuple[Scene, PageServer], page: object
) -> None:
    scene, server = served
    open_queue(page, server, "review")
    page.keyboard.press("Shift+ArrowRight")  # type: ignore[attr-defined]  # tiles 1 and 2
    page.keyboard.press("Shift+ArrowRight")  # type: ignore[attr-defined]  # and 3
    page.keyboard.press("3")  # type: ignore[attr-defined]  # fox
    wait_for(lambda: len(list((scene.root / "fox").glob("uncertain_*"))) == 3, timeout=30,
             what="three files in fox/")  # fmt: skip
    assert page.locator(".tile.acted").count() == 3  # type: ignore[attr-defined]


def test_the_running_server_refuses_csrf_less_posts_foreign_hosts_and_traversal(
    served: tuple[Scene, PageServer], page: object
) -> None:
    scene, server = served
    open_queue(page, server, "review")
    # the page's own origin and cookie, but no CSRF token
    status = page.evaluate(  # type: ignore[attr-defined]
        """async () => (await fetch('/api/act', {method: 'POST',
              headers: {'Content-Type': 'application/json'},
              body: JSON.stringify({id: 1, verb: 'reject', queue: 'review'})})).status"""
    )
    assert status == 403
    port = server.review.secrets.port
    token = server.review.secrets.token

    def get(path: str, host: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        status = conn.getresponse().status
        conn.close()
        return status

    assert get(f"/queue/review?token={token}", f"rebound.example:{port}") == 403
    for path in ("/image/..%2F..%2F..%2Fetc%2Fpasswd", "/static/..%2F..%2Fserver.py",
                 "/image/../../journal.sqlite3"):  # fmt: skip
        assert get(f"{path}?token={token}", f"127.0.0.1:{port}") in (307, 403, 404)
        assert get(path, f"127.0.0.1:{port}") == 403  # and without the token, nothing at all
    assert (scene.root / "_review" / "uncertain_0.png").exists()
