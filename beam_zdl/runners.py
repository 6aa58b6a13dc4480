"""Which Beam runner a beam_zdl pipeline runs on."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

__all__ = ["pipeline_runner"]


def pipeline_runner(options: PipelineOptions):
    """The runner for one bounded batch.

    The DirectRunner (Beam's default) first tries Prism, which it downloads at
    run time; bounded batches need none of that, so they run on the
    FnApiRunner, which honours ``--direct_num_workers`` and
    ``--direct_running_mode``. Any other runner is used as given.
    """
    runner = options.view_as(StandardOptions).runner
    if runner in (None, "DirectRunner", "direct", "FnApiRunner"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner
        return FnApiRunner()
    return runner
