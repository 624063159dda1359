"""Logging: loguru, configured once at the entry point from the ``[log]`` section.

Modules only ``from loguru import logger``; this is the one place that adds sinks.
"""

import sys
from typing import TextIO

from loguru import logger
from tqdm import tqdm

from gensift.daemon.config import ConfigError, LogSettings

HUMAN_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <8}</level> | {message}"
)
FILE_ROTATION = "10 MB"
FILE_RETENTION = 5


class _TqdmSink:
    """Writes log lines above an active tqdm progress bar instead of through it."""

    def write(self, message: str) -> None:
        tqdm.write(message, end="", file=sys.stderr)


def tqdm_sink() -> TextIO:
    """A stderr sink for commands that show a progress bar."""
    return _TqdmSink()  # type: ignore[return-value]


def setup_logging(log: LogSettings, *, sink: TextIO | None = None) -> None:
    """Replace every sink with stderr (or ``sink``) and, when ``log.file`` is set, a file.

    With ``log.json`` each line is one JSON object (loguru's ``serialize``), for journald and
    log shippers. Raises ConfigError naming ``log.file`` when the file cannot be opened.
    """
    logger.remove()
    logger.add(
        sink if sink is not None else sys.stderr,
        level=log.level,
        format=HUMAN_FORMAT,
        serialize=log.json,
        colorize=False if log.json else None,  # None: colour only on a terminal
        backtrace=False,
        diagnose=False,
    )
    if log.file is not None:
        _add_file_sink(log)


def _add_file_sink(log: LogSettings) -> None:
    path = log.file
    assert path is not None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        logger.add(
            path,
            level=log.level,
            format=HUMAN_FORMAT,
            serialize=log.json,
            colorize=False,
            rotation=FILE_ROTATION,
            retention=FILE_RETENTION,
            enqueue=False,
            encoding="utf-8",
            errors="backslashreplace",  # a path that is not UTF-8 is escaped, not lost
            backtrace=False,
            diagnose=False,
        )
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"log.file: cannot open log file {path}: {reason}", key="log.file"
        ) from None
