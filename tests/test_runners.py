"""Runner flags beam_zdl sets: pure option logic, no runner started."""

from __future__ import annotations

import logging

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_zdl.runners import FlinkOptions, apply_runner_defaults, is_flink


def _forwarded(options: PipelineOptions) -> dict:
    """What a portable runner sends to the job server (as PortableRunner builds it)."""
    return options.get_all_options(drop_default=True)


@pytest.mark.parametrize("runner", ["FlinkRunner", "flink",
                                    "apache_beam.runners.portability.flink_runner.FlinkRunner"])
def test_flink_gets_finish_bundle_before_checkpointing_with_a_log_line(runner, caplog):
    options = PipelineOptions([f"--runner={runner}", "--streaming",
                               "--checkpointing_interval=1000"])
    with caplog.at_level(logging.INFO, logger="beam_zdl.runners"):
        apply_runner_defaults(options)
    assert _forwarded(options)["finish_bundle_before_checkpointing"] is True
    assert _forwarded(options)["checkpointing_interval"] == 1000
    assert "PR #12345" in caplog.text


@pytest.mark.parametrize("flag, want", [("--finish_bundle_before_checkpointing", True),
                                        ("--finish_bundle_before_checkpointing=true", True),
                                        ("--finish_bundle_before_checkpointing=false", False)])
def test_a_value_the_user_set_is_kept(flag, want):
    options = PipelineOptions(["--runner=FlinkRunner", "--streaming", flag])
    apply_runner_defaults(options)
    assert options.view_as(FlinkOptions).finish_bundle_before_checkpointing is want


@pytest.mark.parametrize("runner", [None, "PrismRunner", "DirectRunner", "DataflowRunner"])
def test_other_runners_are_left_alone(runner):
    options = PipelineOptions([f"--runner={runner}"] if runner else [])
    apply_runner_defaults(options)
    assert not is_flink(options)
    assert "finish_bundle_before_checkpointing" not in _forwarded(options)
