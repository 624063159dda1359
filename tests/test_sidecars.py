"""XMP sidecars: written beside each placed file, moved with it, removed by undo."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from reviewkit import make_scene
from starlette.testclient import TestClient

from gensift.daemon.cli import main
from gensift.daemon.review.guard import Secrets
from gensift.daemon.review.server import build_review, create_app
from gensift.daemon.routing.journal import Journal
from gensift.daemon.routing.sidecars import NAMESPACE

NS = {
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "dc": "http://purl.org/dc/elements/1.1/",
    "g": NAMESPACE,
}


def read(path: Path) -> tuple[dict[str, str], list[str]]:
    """The Description's attributes (by prefix) and its dc:subject tags."""
    root = ET.parse(path).getroot()
    desc = root.find(".//rdf:Description", NS)
    assert desc is not None
    short = {v: k for k, v in NS.items()}
    attrs = {}
    for key, value in desc.attrib.items():
        uri, _, name = key[1:].partition("}")
        attrs[f"{short.get(uri, uri)}:{name}"] = value
    tags = [li.text or "" for li in desc.findall("dc:subject/rdf:Bag/rdf:li", NS)]
    return attrs, tags


def with_sidecars(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    text = config.read_text().replace("[journal]", 'sidecars = "xmp"\n[journal]')
    config.write_text(text)


def test_every_placed_file_gets_a_sidecar_photo_managers_read(tmp_path: Path) -> None:
    from reviewkit import write_scene_config

    write_scene_config(tmp_path)
    with_sidecars(tmp_path)
    scene = make_scene(tmp_path, config_ready=True)
    cat = scene.root / "cat" / "cat_0.png.xmp"
    attrs, tags = read(cat)
    assert tags == ["gensift/cat"]
    assert attrs["g:Action"] == "move" and attrs["g:Class"] == "cat"
    assert float(attrs["g:Probability"]) == 0.99
    assert json.loads(attrs["g:Probabilities"])["feature"]["cat"] == 0.99
    assert json.loads(attrs["g:Checkpoints"])["feature"] == "feature@v3"
    assert "xmp:Rating" not in attrs
    rejected, tags = read(scene.root / "_rejected" / "broken_0.png.xmp")
    assert rejected["xmp:Rating"] == "-1" and tags == ["gensift/_rejected"]
    assert not list(scene.inbox.glob("*.xmp"))


def test_the_sidecar_moves_with_a_page_action_and_undo_removes_it(tmp_path: Path) -> None:
    from reviewkit import write_scene_config

    write_scene_config(tmp_path)
    with_sidecars(tmp_path)
    scene = make_scene(tmp_path, config_ready=True)
    secrets = Secrets(port=48123)
    client = TestClient(create_app(build_review(scene.settings, secrets)),
                        base_url="http://127.0.0.1:48123")  # fmt: skip
    client.get(f"/?token={secrets.token}")
    with Journal.open(scene.journal) as journal:
        entry = next(e for e in journal.placed() if e.destination.name == "uncertain_0.png")
    headers = {"X-CSRF-Token": secrets.csrf, "Origin": "http://127.0.0.1:48123"}
    body = {"id": entry.id, "verb": "class", "class": "fox", "queue": "review"}
    r = client.post("/api/act", headers=headers, json=body)
    assert r.status_code == 200
    assert not (scene.root / "_review" / "uncertain_0.png.xmp").exists()
    attrs, tags = read(scene.root / "fox" / "uncertain_0.png.xmp")
    assert tags == ["gensift/fox"] and attrs["g:Reason"] == "human"
    # gensift undo of everything: files leave the output root, their sidecars with them
    assert main(["undo", "--since", "1h", "-c", str(scene.config)]) == 0
    assert not list(scene.root.rglob("*.xmp"))
    assert not list(scene.inbox.glob("*.xmp"))


def test_a_sidecar_gensift_did_not_write_is_never_replaced(tmp_path: Path) -> None:
    from gensift.daemon.routing.records import Decision
    from gensift.daemon.routing.sidecars import remove_sidecar, write_sidecar

    photo = tmp_path / "photo.png"
    photo.write_bytes(b"x")
    theirs = tmp_path / "photo.png.xmp"
    theirs.write_text("<x:xmpmeta>the user's own</x:xmpmeta>")
    write_sidecar(photo, Decision("move", "class", "cat", 0.9), {}, "cat")
    remove_sidecar(photo)
    assert theirs.read_text() == "<x:xmpmeta>the user's own</x:xmpmeta>"
