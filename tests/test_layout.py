"""The shape of the house: what may import what (docs/architecture.md).

- ``models`` (the learning side) never imports ``daemon`` (the runtime).
- What watches folders, lists files, keeps the journal and moves files needs no model:
  importing it must not import torch (a minute on a slow machine, and gigabytes).
- ``routing`` (files and the journal) does not reach up into ``runtime``, ``commands``,
  ``platforms``, ``demo`` or ``review``; ``runtime`` does not reach into ``commands``,
  ``demo`` or ``review``; the review page acts through ``routing``, never the runtime.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

TORCH_FREE = [
    "gensift.daemon.runtime.watcher",
    "gensift.daemon.runtime.paths",
    "gensift.daemon.runtime.layout",
    "gensift.daemon.runtime.decide",
    "gensift.daemon.routing.journal",
    "gensift.daemon.routing.router",
    "gensift.daemon.routing.recovery",
    "gensift.daemon.commands.history",
    "gensift.daemon.commands.labels",
    "gensift.daemon.review.server",  # the page and its thumbnails need no model
    "gensift.models.pixels",
]


@pytest.mark.parametrize("module", TORCH_FREE)
def test_modules_that_need_no_model_do_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; print([m for m in sys.modules if m.split('.')[0] == 'torch'])"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert out == "[]", f"importing {module} imported {out}"


def _imports(path: Path) -> set[str]:
    """Every gensift module a file imports, at any depth of the file (lazy imports too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gensift"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("gensift"))
    return found


FORBIDDEN = {
    "models": ("gensift.daemon",),
    "daemon/routing": (
        "gensift.daemon.runtime",
        "gensift.daemon.commands",
        "gensift.daemon.platforms",
        "gensift.daemon.demo",
        "gensift.daemon.review",
    ),
    "daemon/runtime": ("gensift.daemon.commands", "gensift.daemon.demo", "gensift.daemon.review"),
    "daemon/review": ("gensift.daemon.runtime", "gensift.daemon.platforms", "gensift.daemon.demo"),
}


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_imports_run_one_way(folder: str) -> None:
    wrong = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in sorted((REPO / folder).rglob("*.py"))
        for name in sorted(_imports(path))
        if name.startswith(FORBIDDEN[folder])
    ]
    assert not wrong, "\n".join(wrong)
