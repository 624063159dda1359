"""The review page's rules, through its HTTP API without a browser (the browser tests
drive the same routes in Chromium): tokens, Host, CSRF, what may be served, and that
every action is a journalled move and a label that undo takes back byte for byte."""

from __future__ import annotations

import hashlib
import http.cookiejar
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from reviewkit import CLASSES, Scene, make_scene
from sortkit import write_config
from starlette.testclient import TestClient
from watchkit import daemon_thread, logged

from gensift.daemon.cli import main
from gensift.daemon.commands.labels import current_labels, find_hand_moves, record_hand_moves
from gensift.daemon.review.guard import Secrets
from gensift.daemon.review.server import build_review, create_app
from gensift.daemon.routing.journal import Journal

PORT = 48123  # the TestClient does not listen; the port is only what Host must say


@pytest.fixture
def scene(tmp_path: Path) -> Scene:
    return make_scene(tmp_path)


def client_for(scene: Scene, *, authorised: bool = True) -> tuple[TestClient, Secrets]:
    secrets = Secrets(port=PORT)
    client = TestClient(create_app(build_review(scene.settings, secrets)),
                        base_url=f"http://127.0.0.1:{PORT}")  # fmt: skip
    if authorised:
        assert client.get(f"/?token={secrets.token}").status_code == 200
    return client, secrets


def post(client: TestClient, secrets: Secrets, path: str, body: dict) -> dict:
    r = client.post(path, json=body, headers=_same_origin(secrets))
    assert r.status_code == 200, r.text
    return r.json()


def act(client: TestClient, secrets: Secrets, scene: Scene, name: str, verb: str, queue: str,
        cls: str | None = None) -> dict:  # fmt: skip
    body = {"id": row_for(scene, name), "verb": verb, "queue": queue, "class": cls}
    return post(client, secrets, "/api/act", body)


def _same_origin(secrets: Secrets) -> dict[str, str]:
    return {"X-CSRF-Token": secrets.csrf, "Origin": f"http://127.0.0.1:{PORT}"}


def row_for(scene: Scene, name: str) -> int:
    with Journal.open(scene.journal) as journal:
        return next(e.id for e in journal.placed() if e.destination and e.destination.name == name)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- who may talk to the page ---------------------------------------------------------------


def test_without_the_token_everything_is_403_and_the_token_url_sets_a_cookie(
    scene: Scene,
) -> None:
    client, secrets = client_for(scene, authorised=False)
    entry = row_for(scene, "uncertain_0.png")
    for path in ("/", "/queue/review", f"/thumb/{entry}", f"/image/{entry}", "/api/counts"):
        assert client.get(path).status_code == 403, path
    assert client.get("/queue/review?token=wrong").status_code == 403
    r = client.get(f"/queue/review?token={secrets.token}", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/queue/review"  # token not kept
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert client.get("/queue/review").status_code == 200  # the cookie carries it now


def test_a_foreign_host_header_is_refused_even_with_the_token(scene: Scene) -> None:
    client, secrets = client_for(scene)
    for host in ("evil.example", f"evil.example:{PORT}", f"127.0.0.1:{PORT + 1}", ""):
        r = client.get(f"/queue/review?token={secrets.token}", headers={"Host": host})
        assert r.status_code == 403, host
    assert client.get("/queue/review", headers={"Host": f"localhost:{PORT}"}).status_code == 200


def test_a_post_without_the_csrf_token_or_from_another_origin_changes_nothing(
    scene: Scene,
) -> None:
    client, secrets = client_for(scene)
    entry = row_for(scene, "uncertain_0.png")
    body = {"id": entry, "verb": "class", "class": "dog", "queue": "review"}
    origin = {"Origin": f"http://127.0.0.1:{PORT}"}
    attempts = [
        {},  # neither
        origin,  # no CSRF token
        {"X-CSRF-Token": "guess", **origin},
        {"X-CSRF-Token": secrets.csrf},  # no Origin
        {"X-CSRF-Token": secrets.csrf, "Origin": "http://evil.example"},
        {**_same_origin(secrets), "Sec-Fetch-Site": "cross-site"},
    ]
    for headers in attempts:
        assert client.post("/api/act", json=body, headers=headers).status_code == 403, headers
    assert (scene.root / "_review" / "uncertain_0.png").exists()
    assert not (scene.root / "dog" / "uncertain_0.png").exists()


def test_only_files_under_the_root_or_a_watched_folder_are_served(
    scene: Scene, tmp_path: Path
) -> None:
    client, _ = client_for(scene)
    entry = row_for(scene, "uncertain_0.png")
    assert (
        client.get(f"/image/{entry}").content
        == (scene.root / "_review/uncertain_0.png").read_bytes()
    )
    for path in ("/image/..%2F..%2Fetc%2Fpasswd", "/image/../../etc/passwd",
                 "/thumb/%2e%2e%2fjournal.sqlite3", "/static/..%2F..%2Freview%2Fserver.py",
                 "/static/../server.py", "/image/-1", "/image/999999"):  # fmt: skip
        r = client.get(path)
        assert r.status_code in (403, 404), path
        assert b"import" not in r.content and b"root:" not in r.content
    # a journal row whose file was replaced by a link out of the root is not followed
    secret = tmp_path / "secret.txt"
    secret.write_text("private\n")
    placed = scene.root / "_review" / "uncertain_1.png"
    placed.unlink()
    placed.symlink_to(secret)
    r = client.get(f"/image/{row_for(scene, 'uncertain_1.png')}")
    assert r.status_code == 403 and b"private" not in r.content


# -- queues ------------------------------------------------------------------------------


def test_queues_count_their_files_and_review_puts_the_smallest_margin_first(
    scene: Scene,
) -> None:
    client, _ = client_for(scene)
    assert client.get("/api/counts").json() == {"review": 4, "audit": 9, "rejected": 2,
                                                "recent": 15}  # fmt: skip
    page = client.get("/queue/review").text
    order = [page.index(f"uncertain_{i}.png") for i in range(4)]
    assert order == sorted(order)  # margins grow with the number
    assert client.get("/queue/nonsense").status_code == 404


def test_item_details_include_the_generation_parameters(scene: Scene) -> None:
    client, _ = client_for(scene)
    item = client.get(f"/api/item/{row_for(scene, 'uncertain_0.png')}").json()
    assert item["parameters"]["prompt"] == "a fox in the snow, watercolour"
    assert item["parameters"]["negative"] == "blurry"
    assert item["parameters"]["settings"]["Seed"] == "1234"
    assert item["parameters"]["settings"]["Model"] == "sdxl, base"
    assert item["checkpoints"]["feature"] == "feature@v3"
    assert item["actor"] == "gensift"
    assert client.get(f"/thumb/{item['id']}").headers["content-type"] == "image/jpeg"


# -- actions -----------------------------------------------------------------------------


def test_a_class_key_moves_the_file_records_a_label_and_undo_puts_it_back_exactly(
    scene: Scene, capsys: pytest.CaptureFixture[str]
) -> None:
    client, secrets = client_for(scene)
    source = scene.root / "_review" / "uncertain_0.png"
    digest = sha(source)
    entry = row_for(scene, "uncertain_0.png")
    done = post(client, secrets, "/api/act",
                {"id": entry, "verb": "class", "class": "dog", "queue": "review"})  # fmt: skip
    assert done["folder"] == "dog" and not source.exists()
    assert sha(scene.root / "dog" / "uncertain_0.png") == digest
    with Journal.open(scene.journal) as journal:
        row = journal.get(done["entry"])
        assert (row.actor, row.action, row.label, row.reason) == ("human", "move", "dog", "human")
        standing = current_labels(journal.labels())
    assert standing[(digest, "feature")].label == "dog"
    assert standing[(digest, "feature")].source == "review"
    assert client.get("/api/counts").json()["review"] == 3

    # the action is in gensift history
    assert main(["history", "-c", str(scene.config), "--limit", "1"]) == 0
    assert "dog" in capsys.readouterr().out

    post(client, secrets, "/api/undo", {"label": done["label"]["id"]})
    assert sha(source) == digest and not (scene.root / "dog" / "uncertain_0.png").exists()
    with Journal.open(scene.journal) as journal:
        assert (digest, "feature") not in current_labels(journal.labels())
    assert client.get("/api/counts").json()["review"] == 4
    r = client.post("/api/undo", json={"label": done["label"]["id"]}, headers=_same_origin(secrets))
    assert r.status_code == 409  # nothing to undo twice


def test_reject_on_an_audit_item_quarantines_it_as_an_audit_label(scene: Scene) -> None:
    client, secrets = client_for(scene)
    entry = row_for(scene, "cat_0.png")
    digest = scene.files["cat_0.png"]
    done = post(client, secrets, "/api/act", {"id": entry, "verb": "reject", "queue": "audit"})
    assert done["folder"] == "_rejected"
    assert sha(scene.root / "_rejected" / "cat_0.png") == digest
    with Journal.open(scene.journal) as journal:
        label = current_labels(journal.labels())[(digest, "quality")]
    assert (label.label, label.source) == ("reject", "audit")
    counts = client.get("/api/counts").json()
    assert counts["audit"] == 8 and counts["rejected"] == 3


def test_accept_confirms_a_move_in_place_and_sends_an_uncertain_file_to_the_favoured_class(
    scene: Scene,
) -> None:
    client, secrets = client_for(scene)
    done = act(client, secrets, scene, "fox_1.png", "accept", "audit")
    assert done["entry"] is None and (scene.root / "fox" / "fox_1.png").exists()
    assert done["label"]["label"] == "fox" and done["label"]["source"] == "audit"
    done = act(client, secrets, scene, "uncertain_1.png", "accept", "review")
    assert done["folder"] == CLASSES[1]  # uncertain_1's favoured class
    assert (scene.root / CLASSES[1] / "uncertain_1.png").exists()


def test_keep_rescues_a_reject_to_review_and_unknown_classes_are_refused(scene: Scene) -> None:
    client, secrets = client_for(scene)
    done = act(client, secrets, scene, "broken_0.png", "keep", "rejected")
    assert done["folder"] == "_review" and done["label"]["source"] == "rescue"
    assert (scene.root / "_review" / "broken_0.png").exists()
    r = client.post("/api/act", headers=_same_origin(secrets),
                    json={"id": row_for(scene, "uncertain_2.png"), "verb": "class",
                          "class": "../../etc", "queue": "review"})  # fmt: skip
    assert r.status_code == 409 and "unknown class" in r.json()["error"]
    assert (scene.root / "_review" / "uncertain_2.png").exists()


def test_a_file_changed_since_it_was_placed_is_not_acted_on(scene: Scene) -> None:
    client, secrets = client_for(scene)
    placed = scene.root / "_review" / "uncertain_3.png"
    placed.write_bytes(placed.read_bytes() + b"edited")
    r = client.post("/api/act", headers=_same_origin(secrets),
                    json={"id": row_for(scene, "uncertain_3.png"), "verb": "class",
                          "class": "cat", "queue": "review"})  # fmt: skip
    assert r.status_code == 409 and "changed" in r.json()["error"]
    assert placed.exists() and not (scene.root / "cat" / "uncertain_3.png").exists()


def test_gensift_undo_reverses_the_page_actions_and_labels_counts_them(
    scene: Scene, capsys: pytest.CaptureFixture[str]
) -> None:
    client, secrets = client_for(scene)
    act(client, secrets, scene, "uncertain_0.png", "class", "review", "fox")
    act(client, secrets, scene, "uncertain_1.png", "class", "review", "cat")
    act(client, secrets, scene, "dog_2.png", "accept", "audit")
    assert main(["labels", "-c", str(scene.config)]) == 0
    out = capsys.readouterr().out
    assert "3 labelled files" in out and "fox" in out and "1 audit" in out
    assert main(["undo", "-c", str(scene.config)]) == 0  # the last run: the page's
    assert (scene.root / "_review" / "uncertain_0.png").exists()
    assert (scene.root / "_review" / "uncertain_1.png").exists()


# -- live precision -----------------------------------------------------------------------


def test_audit_answers_give_live_precision_with_its_interval_and_count(
    scene: Scene, capsys: pytest.CaptureFixture[str]
) -> None:
    client, secrets = client_for(scene)
    for i in range(3):  # cat: three of three confirmed
        act(client, secrets, scene, f"cat_{i}.png", "accept", "audit")
    act(client, secrets, scene, "dog_0.png", "accept", "audit")  # dog: one right,
    act(client, secrets, scene, "dog_1.png", "class", "audit", "fox")  # one another class,
    act(client, secrets, scene, "dog_2.png", "reject", "audit")  # one broken
    live = {x["class"]: x for x in client.get("/api/stats").json()["live_precision"]}
    assert set(live) == {"cat", "dog"}  # fox: nothing audited, no figure
    assert (live["cat"]["right"], live["cat"]["audited"]) == (3, 3)
    assert (live["dog"]["right"], live["dog"]["audited"]) == (1, 3)
    lo, hi = live["cat"]["interval95"]
    assert 0.25 < lo < 0.35 and hi == 1.0  # 3 of 3 is far from proof of 0.95
    assert not live["cat"]["below_target"]
    assert live["dog"]["below_target"]  # 1 of 3: the upper bound is under 0.95
    page = client.get("/queue/audit").text
    assert "below target" in page and "dog 1/3" in page

    # an undone audit answer no longer counts
    done = act(client, secrets, scene, "fox_0.png", "accept", "audit")
    post(client, secrets, "/api/undo", {"label": done["label"]["id"]})
    assert "fox" not in {x["class"] for x in client.get("/api/stats").json()["live_precision"]}

    assert main(["stats", "-c", str(scene.config)]) == 1  # a class is below target
    out = capsys.readouterr().out
    assert "6 audited" in out and "cat: 3/3" in out and "dog: 1/3" in out and "BELOW" in out
    # and where files are now: what gensift placed, what the person moved
    assert re.search(r"\b3\s+move\s+cat/\s+by gensift", out), out
    assert re.search(r"\b1\s+quarantine\s+_rejected/\s+by human", out), out


def test_the_daemon_says_at_start_up_when_live_precision_is_below_target(
    tmp_path: Path, models: tuple[Path, Path], log_lines: list[str]
) -> None:
    scene = make_scene(tmp_path)
    client, secrets = client_for(scene)
    for i in range(3):
        act(client, secrets, scene, f"fox_{i}.png", "class", "audit", "cat")  # all wrong
    config = write_config(tmp_path, *models)  # the same output root and journal
    with daemon_thread(config):
        pass
    assert logged(log_lines, "live precision fox: 0/3", "BELOW TARGET", "gensift review")


def test_the_page_acts_while_gensift_watch_runs_on_the_same_journal(
    tmp_path: Path, models: tuple[Path, Path]
) -> None:
    scene = make_scene(tmp_path)
    config = write_config(tmp_path, *models)  # the same output root and journal
    with daemon_thread(config):  # holds the journal lock for its whole life
        client, secrets = client_for(scene)
        done = act(client, secrets, scene, "uncertain_2.png", "class", "review", "fox")
        assert (scene.root / "fox" / "uncertain_2.png").exists()
        post(client, secrets, "/api/undo", {"label": done["label"]["id"]})
        assert (scene.root / "_review" / "uncertain_2.png").exists()


def test_gensift_review_serves_until_ctrl_c_and_prints_the_tokened_url(scene: Scene) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gensift.daemon.cli", "review", "--no-browser",
         "-c", str(scene.config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    statuses: list[object] = []
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("gensift review: http://127.0.0.1:"), line
        url = line.split(": ", 1)[1].strip()
        no_proxy = urllib.request.ProxyHandler({})
        browser = urllib.request.build_opener(
            no_proxy, urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        stranger = urllib.request.build_opener(no_proxy)
        for opener, address in ((browser, url), (stranger, url.split("?")[0])):
            try:  # the token, then its cookie; then no token and no cookie
                with opener.open(address, timeout=30) as r:
                    statuses.append((r.status, "uncertain_0.png" in r.read().decode()))
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)
            except urllib.error.URLError as exc:
                statuses.append(f"{exc.reason} (server running: {proc.poll() is None})")
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert statuses == [(200, True), 403], (statuses, err)
    assert proc.returncode == 0, err
    assert "stopped" in out and "Traceback" not in err


def test_files_moved_by_hand_between_gensifts_folders_become_labels(scene: Scene) -> None:
    root = scene.root
    (root / "cat" / "cat_0.png").rename(root / "dog" / "was_cat.png")  # another class
    (root / "_review" / "uncertain_0.png").rename(root / "fox" / "uncertain_0.png")
    (root / "_rejected" / "broken_0.png").rename(root / "cat" / "broken_0.png")  # rescued
    (root / "dog" / "dog_1.png").rename(root / "_rejected" / "dog_1.png")  # culled
    (root / "fox" / "fox_0.png").rename(root / "fox" / "renamed.png")  # same class: nothing
    (root / "cat" / "mine.png").write_bytes(b"not gensift's")  # not in the journal: nothing
    moves = {(m.path.name, m.stage, m.label) for m in find_hand_moves(scene.settings)}
    assert moves == {
        ("was_cat.png", "feature", "dog"),
        ("uncertain_0.png", "feature", "fox"),
        ("broken_0.png", "feature", "cat"),
        ("broken_0.png", "quality", "keep"),
        ("dog_1.png", "quality", "reject"),
    }
    found = find_hand_moves(scene.settings)
    assert record_hand_moves(scene.settings, found) == 5
    assert record_hand_moves(scene.settings, found) == 0  # recorded once
    with Journal.open(scene.journal) as journal:
        standing = current_labels(journal.labels())
    assert standing[(scene.files["cat_0.png"], "feature")].label == "dog"
    assert {x.source for x in standing.values()} == {"moved"}


def test_undoing_an_automatic_quarantine_is_a_keep_label(scene: Scene) -> None:
    assert main(["undo", "-c", str(scene.config)]) == 0  # the last run: the scene's sort
    with Journal.open(scene.journal) as journal:
        standing = current_labels(journal.labels())
    for name in ("broken_0.png", "broken_1.png"):
        label = standing[(scene.files[name], "quality")]
        assert (label.label, label.source) == ("keep", "undo")
    # a class move undone says only that the class was wrong: no label (there is no "not")
    assert (scene.files["cat_0.png"], "feature") not in standing


def test_a_repair_waits_for_a_page_action_under_way_and_the_other_way_round(
    scene: Scene,
) -> None:
    import threading

    from gensift.daemon.routing.lock import operation_lock
    from gensift.daemon.routing.recovery import repair

    finished = threading.Event()

    def start_of_another_process() -> None:  # gensift watch / sort / undo starting up
        with Journal.open(scene.journal) as journal:
            repair(journal, scene.root)
        finished.set()

    with operation_lock(scene.journal):  # what the page holds for one action
        other = threading.Thread(target=start_of_another_process)
        other.start()
        assert not finished.wait(0.5)  # the repair waits while the action is under way
    assert finished.wait(30)  # and runs once it is done
    other.join()
