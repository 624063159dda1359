"""Checks before a system install: can the ``gensift`` user reach what the unit names?

The system unit runs as a dedicated user in a sandbox, so a setup that works in your shell
can still fail there: a config in a closed home folder, a missing watched folder, data in the
private /tmp. :func:`check_system_install` finds all of it before anything is written.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gensift.daemon.config import Settings
from gensift.daemon.platforms.servicepaths import refuse_account_paths
from gensift.daemon.platforms.systemd_unit import read_write_paths
from gensift.models.errors import InputError

#: The dedicated user's home; ``StateDirectory=gensift`` makes it exist and writable.
SERVICE_HOME = Path("/var/lib/gensift")
#: Groups that own GPU device nodes on most distributions (AMD ROCm, Intel): a new
#: service user joins those that exist. NVIDIA's nodes are usually mode 0666.
GPU_GROUPS = ("video", "render")
#: Folders the system unit replaces with its own (PrivateTmp=yes): data there is unreachable.
PRIVATE_TMP = (Path("/tmp"), Path("/var/tmp"))


@dataclass(frozen=True)
class Identity:
    """Who the service runs as, for permission checks; ``uid`` None: not created yet."""

    name: str
    uid: int | None
    gids: frozenset[int]

    @classmethod
    def of(cls, name: str) -> Identity:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return cls(name, None, frozenset(existing_gids(GPU_GROUPS)))
        return cls(name, entry.pw_uid, frozenset(os.getgrouplist(name, entry.pw_gid)))

    def may(self, st: os.stat_result, want: int) -> bool:
        """Whether the mode bits give ``want`` (a mask of 4 read, 2 write, 1 search)."""
        if self.uid == 0:
            return True
        if st.st_uid == self.uid:
            bits = st.st_mode >> 6
        elif st.st_gid in self.gids:
            bits = st.st_mode >> 3
        else:
            bits = st.st_mode
        return (bits & want) == want


def existing_gids(names: Iterable[str]) -> list[int]:
    gids = []
    for name in names:
        try:
            gids.append(grp.getgrnam(name).gr_gid)
        except KeyError:
            continue
    return gids


def _has_acl(path: Path) -> bool:
    """A POSIX ACL may grant what the mode bits do not: then trust it and do not judge."""
    try:
        return "system.posix_acl_access" in os.listxattr(path)
    except OSError:
        return False


def access_problem(path: Path, who: Identity, want: int) -> str | None:
    """Why ``who`` cannot reach ``path`` (search on every folder above it, ``want`` on the
    path itself), following symlinks; None when the mode bits allow it."""
    real = path.resolve()
    for target in [path] if real == path else [path, real]:
        for step, need in [*((p, 1) for p in reversed(target.parents)), (target, want)]:
            try:
                st = step.stat()
            except OSError as exc:
                return f"{step}: {exc.strerror or exc}"
            if not who.may(st, need) and not _has_acl(step):
                mode = stat.filemode(st.st_mode)
                where = f"{path}: " if step != path else ""
                return (
                    f"{where}{step} ({mode}, owner uid {st.st_uid}) keeps the {who.name} user out"
                )
    return None


def check_system_install(settings: Settings, config: Path, python: Path, user: str) -> list[Path]:
    """The folders to create for the system service; raises InputError naming everything
    that would stop it working.

    Paths must be absolute in the file (``~`` and ``$VAR`` would expand for the service
    user). The service user must read the config and the checkpoints, run the interpreter, and
    write the watched folders; the output root and the journal's and log's folders are
    created (owned by the service user) when missing, or must be writable when they exist.
    """
    refuse_account_paths(
        config,
        runs_as=f"the system service runs as the '{user}' user, whose home is {SERVICE_HOME}",
        advice=", or install for yourself instead: gensift service install --user",
    )
    who = Identity.of(user)
    problems: list[str] = []
    checks = [(config, 4), (python, 1)]
    for stage in (settings.stages.quality, settings.stages.feature):
        if stage.checkpoint is not None and stage.checkpoint.exists():
            checks.append((stage.checkpoint, 4))
    for folder in settings.watch.paths:
        if folder.is_dir():
            checks.append((folder, 3))
        else:
            problems.append(
                f"{folder}: the watched folder does not exist; create it first (a unit can "
                f"only make existing folders writable)"
            )
    to_create: list[Path] = []
    for folder in read_write_paths(settings):
        if any(folder.is_relative_to(tmp) for tmp in PRIVATE_TMP):
            problems.append(
                f"{folder}: the service has a private /tmp and /var/tmp (PrivateTmp=yes), so it "
                f"would not see this folder; use one outside them"
            )
        if folder in settings.watch.paths:
            continue
        if folder.is_dir():
            checks.append((folder, 3))
        else:
            to_create.append(folder)
            checks.append((_nearest_existing(folder), 1))
    for path, want in checks:
        problem = access_problem(path, who, want)
        if problem:
            problems.append(problem)
    if problems:
        raise _refusal(problems, who, config)
    return to_create


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _refusal(problems: Sequence[str], who: Identity, config: Path) -> InputError:
    listed = "\n".join(f"  - {p}" for p in problems)
    return InputError(
        f"the system service cannot run with this setup:\n{listed}\n"
        f"The system unit runs as the '{who.name}' user, which must be able to read "
        f"{config}, run the interpreter and write the folders above. Keep the virtual "
        f"environment and the data outside /home (home folders are usually closed to other "
        f"users), e.g. /opt/gensift and /srv, or grant access (see 'Permissions' in "
        f"systemd/README.md). Or install for yourself instead: "
        f"gensift service install --user"
    )
