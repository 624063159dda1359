"""Both an editable and a regular install import ``gensift.daemon`` / ``gensift.models``
and run ``gensift --help`` from outside the repository."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: one module of every package the distribution ships (pyproject.toml lists them)
MODULES = [
    "gensift.daemon.cli",
    "gensift.daemon.commands.sort",
    "gensift.daemon.demo.samples",
    "gensift.daemon.platforms.systemd",
    "gensift.daemon.routing.journal",
    "gensift.daemon.runtime.watcher",
    "gensift.models.train",
]


def _source_copy(tmp_path: Path) -> Path:
    """The project's files without build leftovers, so the install leaves the repo untouched."""
    copy = tmp_path / "src"
    shutil.copytree(
        REPO,
        copy,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "*.egg-info", "__pycache__", ".*_cache"
        ),
    )
    return copy


def _fresh_venv(tmp_path: Path) -> Path:
    """A new virtual environment that sees this one's dependencies but not its gensift."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    target_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # A plain path line: dependencies become importable, but this environment's own
    # .pth files (its editable gensift) are not processed.
    (Path(target_site) / "_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv


@pytest.mark.parametrize("editable", [False, True], ids=["regular", "editable"])
def test_install_imports_namespaced_packages_and_runs_help(tmp_path: Path, editable: bool) -> None:
    source = _source_copy(tmp_path)
    venv = _fresh_venv(tmp_path)
    python = venv / "bin" / "python"
    install = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
    ]
    install += ["-e", str(source)] if editable else [str(source)]
    subprocess.run(install, check=True, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    where = subprocess.run(
        [
            python,
            "-c",
            "import importlib\n"
            f"for name in {MODULES!r}: print(importlib.import_module(name).__file__)",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=elsewhere,
    ).stdout.split()
    expected_root = source if editable else venv
    assert len(where) == len(MODULES)
    assert all(Path(p).is_relative_to(expected_root) for p in where), where
    assert not any(Path(p).is_relative_to(REPO) for p in where)

    helped = subprocess.run(
        [venv / "bin" / "gensift", "--help"], capture_output=True, text=True, cwd=elsewhere
    )
    assert helped.returncode == 0, helped.stderr
    assert "train" in helped.stdout and "evaluate" in helped.stdout
