"""batch_options: memoized views and get_all_options answer as Beam's own do (no broker)."""

from __future__ import annotations

import copy

from apache_beam.options.pipeline_options import DebugOptions, PipelineOptions, StandardOptions

import beam_zdl
from beam_zdl.batch_options import batch_options

FLAGS = ["--bootstrap_servers=localhost:1", "--topics=t", "--checkpoint_dir=/tmp/ckpt",
         "--experiments=a", "--direct_num_workers=2", "--unknown_flag=x"]


def test_get_all_options_answers_as_beam_does_also_after_changes():
    options = beam_zdl.ZdlOptions(FLAGS)
    memo = batch_options(options)
    for kwargs in ({}, {"retain_unknown_options": True}, {"drop_default": True}):
        assert memo.get_all_options(**kwargs) == options.get_all_options(**kwargs)
        assert memo.get_all_options(**kwargs) == options.get_all_options(**kwargs)  # a hit
    # A value set since is seen, in the view, its copies and the options it came from.
    options.view_as(StandardOptions).streaming = True
    assert memo.get_all_options()["streaming"] is True
    assert copy.deepcopy(memo).get_all_options()["streaming"] is True
    assert options.get_all_options() == memo.get_all_options()


def test_get_all_options_hands_out_values_as_beam_does():
    options = beam_zdl.ZdlOptions(FLAGS)
    memo = batch_options(options)
    experiments = memo.view_as(DebugOptions).experiments
    # A value set on the options is theirs (Beam shares it) ...
    assert memo.get_all_options()["experiments"] is experiments
    # ... and a caller that changes its answer changes no later answer.
    answer = memo.get_all_options(retain_unknown_options=True)
    answer["topics"] = "changed"
    answer.clear()
    assert memo.get_all_options(retain_unknown_options=True)["topics"] == "t"


def test_options_of_a_class_defined_later_are_seen():
    memo = batch_options(beam_zdl.ZdlOptions(FLAGS))
    assert "late_flag" not in memo.get_all_options()

    class LateOptions(PipelineOptions):
        @classmethod
        def _add_argparse_args(cls, parser):
            parser.add_argument("--late_flag", default="late", help="defined after the first call")

    assert memo.get_all_options()["late_flag"] == "late"


def test_views_of_copies_answer_as_beam_does_and_share_no_list():
    from apache_beam.options.pipeline_options import (DirectOptions, GoogleCloudOptions,
                                                      SetupOptions, TypeOptions, WorkerOptions)
    classes = [StandardOptions, DirectOptions, DebugOptions, GoogleCloudOptions, TypeOptions,
               SetupOptions, WorkerOptions, beam_zdl.ZdlOptions]
    memo = batch_options(beam_zdl.ZdlOptions(FLAGS))
    for cls in classes:
        memo.view_as(cls)  # parses the flags for cls once
    # Every batch's Pipeline works on a copy: its views are built from those parses.
    first, second = copy.deepcopy(memo), copy.deepcopy(memo)
    plain = beam_zdl.ZdlOptions(FLAGS)
    for cls in classes:
        view, beams = first.view_as(cls), plain.view_as(cls)
        assert type(view) is cls
        assert {k: getattr(view, k) for k in view._visible_option_list()} == \
            {k: getattr(beams, k) for k in beams._visible_option_list()}, cls.__name__
    # A list value changed in one copy (Beam adds experiments) is not the other's.
    first.view_as(DebugOptions).add_experiment("only_first")
    assert "only_first" not in second.view_as(DebugOptions).experiments
    assert "only_first" not in copy.deepcopy(memo).view_as(DebugOptions).experiments
    # A value set on a copy is seen by every view of that copy.
    first.view_as(DirectOptions).direct_num_workers = 7
    assert first.view_as(StandardOptions).get_all_options()["direct_num_workers"] == 7
    # Options of the same flags made later take their lists from the parse: not shared.
    later = batch_options(beam_zdl.ZdlOptions(FLAGS))
    later.view_as(DebugOptions).add_experiment("only_later")
    assert batch_options(beam_zdl.ZdlOptions(FLAGS)).view_as(DebugOptions).experiments == ["a"]
