"""Client secrets: kept out of logs, errors, display data, checkpoints and job descriptions.

Kafka client settings such as ``sasl.password`` or ``ssl.key.password`` travel
in ``--consumer_config``. Runners keep pipeline options, and the pickled DoFns
that carry the settings, in their job descriptions (Flink's web UI, Dataflow's
job page), so a literal secret there is visible to whoever can read the job.

Two tools:

* :func:`redact` returns a copy of settings with every secret value replaced
  by ``<redacted>``; everything beam_zdl shows to people (display data, log
  lines, error messages) goes through it.
* :func:`resolve` replaces *references* by their values where a Kafka client
  is created (driver and workers), so only the reference is stored in options:

  ============================  ==============================================
  value                         replaced by
  ============================  ==============================================
  ``${env:NAME}``               environment variable ``NAME``
  ``${file:/path/to/file}``     the file's contents, without a trailing newline
  ============================  ==============================================

  The variable or file must exist where clients run (on a cluster: on every
  worker). A missing one is a :class:`~beam_zdl.errors.ConfigError` naming the
  setting and the reference, never a value.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Mapping

from beam_zdl.errors import ConfigError

__all__ = ["REDACTED", "is_secret", "redact", "resolve", "literal_secrets"]

_LOGGER = logging.getLogger(__name__)

REDACTED = "<redacted>"

# librdkafka's secret-bearing settings: sasl.password, ssl.key.password,
# ssl.keystore.password, ssl.key.pem, sasl.oauthbearer.client.secret,
# sasl.oauthbearer.config, sasl.jaas.config (Java-style), and anything alike; the Schema
# Registry client's basic.auth.user.info ("user:password") and bearer.auth.token.
_SECRET_KEY = re.compile(r"password|secret|jaas|token|credential|oauthbearer\.config|user\.info|"
                         r"(^|\.)key(\.pem)?$|private", re.IGNORECASE)
_REFERENCE = re.compile(r"^\$\{(env|file):(.+)\}$")


def is_secret(key: str) -> bool:
    """Whether a client setting's value must never be shown."""
    return bool(_SECRET_KEY.search(key))


def redact(settings: Mapping[str, object]) -> dict[str, object]:
    """A copy of ``settings`` with every secret value replaced by ``<redacted>``.

    References (``${env:...}``, ``${file:...}``) are shown as they are: they name
    where the secret lives, not the secret.
    """
    return {key: (value if not is_secret(key) or _is_reference(value) else REDACTED)
            for key, value in settings.items()}


def literal_secrets(settings: Mapping[str, object]) -> list[str]:
    """The keys of secret settings given as literal values rather than references."""
    return sorted(k for k, v in settings.items() if is_secret(k) and not _is_reference(v))


def resolve(settings: Mapping[str, object],
            source: str = "--consumer_config") -> dict[str, object]:
    """A copy of ``settings`` with ``${env:NAME}`` / ``${file:PATH}`` values resolved.

    ``source`` names where the settings came from in error messages.

    Raises:
        ConfigError: a referenced variable or file does not exist here; names the
            setting and the reference.
    """
    out = dict(settings)
    for key, value in settings.items():
        match = _REFERENCE.match(value) if isinstance(value, str) else None
        if match is None:
            continue
        kind, name = match.groups()
        if kind == "env":
            if name not in os.environ:
                raise ConfigError(f"{source} {key!r} refers to environment variable "
                                  f"{name!r}, which is not set in this process "
                                  f"(pid {os.getpid()}); set it where the clients run "
                                  "(driver and every worker)")
            out[key] = os.environ[name]
        else:
            try:
                with open(name, encoding="utf-8") as referenced:
                    out[key] = referenced.read().rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(f"{source} {key!r} refers to file {name!r}, which "
                                  f"cannot be read here ({exc.strerror}); make it readable "
                                  "where the clients run (driver and every worker)") from None
    return out


def _is_reference(value: object) -> bool:
    return isinstance(value, str) and _REFERENCE.match(value) is not None
