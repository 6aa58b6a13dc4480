"""ZdlOptions: every beam_zdl flag, as Beam pipeline options, validated early.

The flags are defined once, in :func:`beam_zdl.config.add_zdl_arguments`,
which needs no Beam; this module adds them to Beam's options. ``ZdlOptions``
subclasses ``PipelineOptions`` directly: Beam's ``get_all_options`` parses
only direct subclasses, so a subclass of ``ZdlOptions`` would lose its flags.

``--bootstrap_servers`` is Beam's own flag (registered by
``KafkaStreamsRunnerOptions``, default ``localhost:9092``); registering it a
second time would make every ``PipelineOptions`` fail, so we reuse it and
read it through :func:`ZdlConfig.from_options`.

:class:`ZdlConfig` lives in :mod:`beam_zdl.config`; modules that read Beam
options import it from here, which registers ZdlOptions with Beam first (Beam
parses only the flags of option classes already defined). It is the
validated, typed view the rest of the package uses. Bad values raise
:class:`~beam_zdl.errors.ConfigError` naming the flag before anything runs.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions

from beam_zdl.config import (MODES, TRIGGERS, ZdlConfig, add_zdl_arguments, near_misses,
                             parse_bool)
from beam_zdl.errors import ConfigError

__all__ = ["ZdlOptions", "ZdlConfig", "MODES", "TRIGGERS", "parse_bool", "warn_near_misses"]

_LOGGER = logging.getLogger(__name__)
_WARNED: set[str] = set()


def warn_near_misses(options: PipelineOptions) -> dict[str, str]:
    """Log a WARNING for each flag Beam did not know that looks like a beam_zdl flag.

    Beam keeps unknown flags aside without a word, so ``--checkpoint_dri=...`` would
    run with no checkpoint directory at all; the warning names the flag meant.

    Returns:
        {unknown flag name: the beam_zdl flag it is probably meant to be}.
    """
    known = options.get_all_options()
    unknown = [name for name in options.get_all_options(retain_unknown_options=True)
               if name not in known]
    found = near_misses(unknown)
    for name, meant in found.items():
        if name not in _WARNED:
            _WARNED.add(name)
            _LOGGER.warning("unknown flag --%s ignored (Beam keeps flags it does not know "
                            "aside): did you mean --%s?", name, meant)
    return found


class ZdlOptions(PipelineOptions):
    """beam_zdl's flags. ``--bootstrap_servers`` comes from Beam (see module doc)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        add_zdl_arguments(parser)

    def validate(self, validator: Any = None) -> list[str]:
        """Beam's validation hook: the errors :meth:`ZdlConfig.from_options` would raise.

        Beam's own ``PipelineOptionsValidator`` only calls its built-in option classes,
        so beam_zdl validates when a transform expands and when ``run_micro_batches``
        starts; this hook lets any caller ask first.
        """
        try:
            ZdlConfig.from_options(self)
        except ConfigError as exc:
            return [str(exc)]
        return []
