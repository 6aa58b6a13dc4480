"""Pipeline options for one batch's pipeline, with memoized views.

Beam's ``PipelineOptions.view_as(cls)`` builds an argparse parser of every
registered flag and parses the argv again on each call, about 3 ms each, and
building and running one pipeline calls it some 150 times (type checks of
every transform, the options validator, the runner). Over many small batches
that was the largest single part of the driver's fixed cost per batch.

A view shares its values with the options it came from (``_all_options`` is
one dict), so handing back the same view object for the same class changes
nothing a caller can observe; :func:`batch_options` returns such a view of
the user's options. The memo is dropped when the options are copied or
pickled (``Pipeline`` deep-copies its options; workers unpickle them).
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

from apache_beam.options.pipeline_options import PipelineOptions

__all__ = ["batch_options"]

_T = TypeVar("_T", bound=PipelineOptions)


class _MemoizedViews(PipelineOptions):
    """PipelineOptions whose ``view_as`` returns one live view per class (no flags)."""

    def view_as(self, cls: type[_T]) -> _T:
        views: dict[type[PipelineOptions], PipelineOptions] = self.__dict__.setdefault(
            "_zdl_views", {})
        view = views.get(cls)
        if view is None:
            view = views[cls] = super().view_as(cls)
        return cast(_T, view)

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = dict(PipelineOptions.__getstate__(self))
        state.pop("_zdl_views", None)
        return state


def batch_options(options: PipelineOptions) -> PipelineOptions:
    """``options`` (same values, shared) with memoized views, for one batch's Pipeline."""
    if isinstance(options, _MemoizedViews):
        return options
    return options.view_as(_MemoizedViews)
