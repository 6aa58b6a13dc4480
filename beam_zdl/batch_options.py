"""Pipeline options for one batch's pipeline, with memoized views.

Beam's ``PipelineOptions.view_as(cls)`` builds an argparse parser of every
registered flag and parses the argv again on each call, about 3 ms each, and
building and running one pipeline calls it some 150 times (type checks of
every transform, the options validator, the runner). Over many small batches
that was the largest single part of the driver's fixed cost per batch.

A view shares its values with the options it came from (one dict of values,
:func:`beam_zdl.compat.options_values`), so handing back the same view object
for the same class changes nothing a caller can observe; :func:`batch_options` returns such a view of
the user's options. The memo is dropped when the options are copied or
pickled (``Pipeline`` deep-copies its options; workers unpickle them).

A view that is not memoized yet (every batch's Pipeline works on a copy of the options,
which starts without views) is built from the flags parsed for its class before: a
view's parse depends only on its class and the flags, and is the 1-2 ms of building
it; about 20 such views per batch.

``get_all_options`` (every flag of every options class: a parser of some 250
flags, built and run, about 5 ms) is asked twice per batch, by ``Pipeline.run``
and by the batch's read; its answer depends only on the flags, the values set
since, its arguments and the options classes defined, so it is remembered by
all of these (across the copies of one run's options).

The views are built from Beam's private fields (:mod:`beam_zdl.compat`); on a Beam
where that is not checked (:func:`beam_zdl.compat.option_views_memoizable`), the
options are used as they are.
"""

from __future__ import annotations

import copy
from typing import Any, TypeVar, cast

from apache_beam.options.pipeline_options import PipelineOptions

import beam_zdl.compat as compat

__all__ = ["batch_options"]

_T = TypeVar("_T", bound=PipelineOptions)

# get_all_options answers, by everything they depend on (see the module doc); a run asks
# with a few argument sets, and a long run's values change rarely.
_ALL_OPTIONS: dict[tuple[Any, ...], dict[str, Any]] = {}
_ALL_OPTIONS_SIZE = 16
# Each options class's parse of a run's flags, for views of the run's options and their
# copies (one per batch pipeline); a copy is handed to each view.
_PARSED: dict[tuple[type[PipelineOptions], tuple[str, ...]], Any] = {}
_PARSED_SIZE = 256


class _MemoizedViews(PipelineOptions):
    """PipelineOptions whose ``view_as`` returns one live view per class (no flags)."""

    def view_as(self, cls: type[_T]) -> _T:
        views: dict[type[PipelineOptions], PipelineOptions] = self.__dict__.setdefault(
            "_zdl_views", {})
        view = views.get(cls)
        if view is None:
            view = views[cls] = self._new_view(cls)
        return cast(_T, view)

    def _new_view(self, cls: type[_T]) -> _T:
        """Beam's ``view_as``, with the flags parsed once per class (see the module doc)."""
        flags = compat.options_flags(self)
        if flags is None or cls.__init__ is not PipelineOptions.__init__:
            return super().view_as(cls)  # sys.argv, or a class that builds itself
        key = (cls, tuple(flags))
        parsed = _PARSED.get(key)
        if parsed is None:
            view = super().view_as(cls)
            if len(_PARSED) >= _PARSED_SIZE:
                _PARSED.pop(next(iter(_PARSED)))
            _PARSED[key] = copy.deepcopy(compat.view_parse(view))
            return view
        # A copy of the parse, so that a list value set into the options is not shared.
        return compat.view_from_parse(cls, flags, copy.deepcopy(parsed),
                                      compat.options_values(self))

    def get_all_options(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        flags = compat.options_flags(self)
        if flags is None or any(callable(a) for a in (*args, *kwargs.values())):
            return super().get_all_options(*args, **kwargs)  # sys.argv, or a parser hook
        values = compat.options_values(self)
        key = (tuple(flags), args, tuple(sorted(kwargs.items())),
               len(PipelineOptions.__subclasses__()), repr(sorted(values.items())))
        answer = _ALL_OPTIONS.get(key)
        if answer is None:
            answer = super().get_all_options(*args, **kwargs)
            if len(_ALL_OPTIONS) >= _ALL_OPTIONS_SIZE:
                _ALL_OPTIONS.pop(next(iter(_ALL_OPTIONS)))
            _ALL_OPTIONS[key] = answer
        # As Beam answers: values set on the options are theirs (shared), parsed ones new.
        return {k: values[k] if k in values else copy.deepcopy(v) for k, v in answer.items()}

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = dict(PipelineOptions.__getstate__(self))
        state.pop("_zdl_views", None)
        return state


def batch_options(options: PipelineOptions) -> PipelineOptions:
    """``options`` (same values, shared) with memoized views, for one batch's Pipeline;
    ``options`` themselves where this Beam's views cannot be built that way."""
    if isinstance(options, _MemoizedViews) or not compat.option_views_memoizable():
        return options
    return options.view_as(_MemoizedViews)
