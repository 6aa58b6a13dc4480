"""Log set-up for ``beam-zdl`` commands and the examples: ``--log_format=text|json``.

``json`` writes one JSON object per line on stderr (python-json-logger): ``time``,
``level``, ``logger``, ``message``, any ``extra`` fields of the call (the driver's
per-batch line carries ``batch_id`` and ``records``), and ``exc_info`` as one string
— so a log collector never has to join lines. Python warnings are routed through
logging too. Secrets never reach a log line: beam_zdl logs no client setting.
"""

from __future__ import annotations

import logging
import sys
from typing import Iterable, Sequence

__all__ = ["configure_logging", "log_format_of"]

_TEXT = "%(asctime)s %(levelname)s %(message)s"
_NOISY = ("apache_beam", "absl")


def log_format_of(argv: Iterable[str], default: str = "text") -> str:
    """The ``--log_format`` value in ``argv`` (``--log_format=json`` or
    ``--log_format json``), else ``default``: for set-up before options are parsed."""
    args = list(argv)
    for i, arg in enumerate(args):
        if arg.startswith("--log_format="):
            return arg.partition("=")[2]
        if arg == "--log_format" and i + 1 < len(args):
            return args[i + 1]
    return default


def configure_logging(log_format: str = "text", level: int = logging.INFO,
                      quiet: Sequence[str] = _NOISY) -> None:
    """Replace the root logger's handlers with one on stderr in ``log_format``.

    Args:
        log_format: ``text`` or ``json``.
        level: the root level.
        quiet: loggers held at WARNING (Beam's own chatter).

    Raises:
        ConfigError: an unknown ``log_format``.
    """
    from beam_zdl.errors import ConfigError
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter
        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
    elif log_format == "text":
        handler.setFormatter(logging.Formatter(_TEXT))
    else:
        raise ConfigError(f"--log_format must be text or json, got {log_format!r}")
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
