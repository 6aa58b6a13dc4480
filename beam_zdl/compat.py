"""Every use of a private Apache Beam or client-library API, behind one door.

beam_zdl pins ``apache-beam`` to the minor versions these were checked against
(:data:`CHECKED_BEAM`; pyproject.toml says the same) and depends on
``google-cloud-storage>=3``; a minor release may change what is private without
notice. Each function here wraps one such use, says why it is needed, and has a test
in ``tests/test_compat.py`` that names the Beam version it was checked against and
fails naming the installed one when the private API changes. Nothing else in beam_zdl
touches these internals (``tests/test_api.py`` checks the package for private names
of Beam). Beam is imported inside the functions, so importing this module costs
nothing.

Fast paths
    Some uses only make beam_zdl faster (a runner session kept across batches,
    batch ranges as runner data, cached DoFn checks, memoized option views). Each
    has a check (``..._supported`` / ``..._reusable`` / ``..._memoizable``) that
    looks at the installed Beam before the fast path is taken; when it fails the
    slower, Beam-only way is used, with the same results, and a WARNING says once
    per process which fast path is off and why.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import threading
import types
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, TypeVar

if TYPE_CHECKING:  # imported lazily: storage (and the CLI) use this module without Beam
    from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker

__all__ = ["CHECKED_BEAM", "windowed_value_maker", "set_tracker_range",
           "tracker_last_attempt", "tracker_checkpointed", "mark_tracker_checkpointed",
           "gcs_transient_predicate", "dofn_checks_cacheable", "cached_dofn_specs",
           "handler_managers_reusable", "reuse_handler_manager", "clear_runner_state",
           "prefix_cache_tokens", "hooks_bundle_managers", "runner_provision_info",
           "register_worker_handler", "abort_control_requests",
           "impulse_payloads_supported", "impulse_payloads", "option_views_memoizable",
           "options_flags", "options_values", "view_parse", "view_from_parse",
           "filter_job_server_output"]

_LOGGER = logging.getLogger(__name__)

# The apache-beam minor versions every function here was checked against (the tests in
# tests/test_compat.py); pyproject.toml pins apache-beam to them.
CHECKED_BEAM = ("2.77",)

_C = TypeVar("_C", bound=type)
_T = TypeVar("_T")


def beam_version() -> str:
    """The installed apache-beam version."""
    from apache_beam import version
    return str(version.__version__)


_off_lock = threading.Lock()
_off_said: set[str] = set()


def _fast_path(name: str, missing: list[str]) -> bool:
    """True when nothing is ``missing``; else False, and a WARNING, once per process per
    fast path, that names it and what this Beam lacks."""
    if not missing:
        return True
    with _off_lock:
        first = name not in _off_said
        _off_said.add(name)
    if first:
        _LOGGER.warning(
            "beam_zdl: fast path %r is off: apache-beam %s is not what it was checked against "
            "(%s): %s. Results are the same, only slower; a beam_zdl checked against this "
            "Beam brings it back", name, beam_version(), ", ".join(CHECKED_BEAM),
            "; ".join(missing))
    return False


def windowed_value_maker() -> Callable[[Any, int, Iterable[Any]], Any]:
    """``make(value, timestamp_micros, windows)``: a ``WindowedValue`` built without
    ``TimestampedValue`` and window assignment.

    The readers emit every record like this (``apache_beam.utils.windowed_value.create``,
    a Cython fast path): a DoFn that yields a WindowedValue has it passed on as is,
    which costs a third of what ``TimestampedValue`` plus assignment costs per record.
    Readers take the function once per range and call it per record: an import
    statement inside a per-record call cost 1.8 us, more than the rest of the record.
    """
    from apache_beam.utils.windowed_value import create
    make: Callable[[Any, int, Iterable[Any]], Any] = create
    return make


# OffsetRestrictionTracker keeps its state in private fields; GrowableOffsetRangeTracker
# (beam_zdl.trackers) extends it to an open end and must read and move them.

def set_tracker_range(tracker: OffsetRestrictionTracker, rng: OffsetRange) -> None:
    """Narrow the tracker to ``rng`` (a split's primary)."""
    tracker._range = rng


def tracker_last_attempt(tracker: OffsetRestrictionTracker) -> Optional[int]:
    """The last offset passed to ``try_claim`` (``_last_claim_attempt``), None before any."""
    last: Optional[int] = tracker._last_claim_attempt
    return last


def tracker_checkpointed(tracker: OffsetRestrictionTracker) -> bool:
    """Whether a checkpoint (``try_split(0)``) happened (``_checkpointed``)."""
    return bool(tracker._checkpointed)


def mark_tracker_checkpointed(tracker: OffsetRestrictionTracker) -> None:
    """Record a checkpoint, as ``OffsetRestrictionTracker.try_split(0)`` does."""
    tracker._checkpointed = True


def gcs_transient_predicate() -> Callable[[BaseException], bool]:
    """google-cloud-storage's own test of a retryable error (``DEFAULT_RETRY._predicate``).

    :class:`beam_zdl.storage.GcsStorage` wraps it to learn whether an upload was
    retried: a retried create-once upload that then fails its precondition may
    have succeeded the first time (see ``GcsStorage.create``).
    """
    from google.cloud.storage.retry import DEFAULT_RETRY
    predicate: Callable[[BaseException], bool] = DEFAULT_RETRY._predicate
    return predicate


# Beam's userstate.get_dofn_specs inspects the signature of every method of a DoFn, and
# is called for every DoFn several times per pipeline (construction, to_runner_api, each
# bundle processor): ~90 calls and ~2,900 inspect.signature calls per micro-batch, 40 % of
# a small batch's fixed cost. Its answer depends only on the class's methods, unless the
# instance holds bound methods of its own (CallableWrapperDoFn of ``Map(obj.method)``).
_specs_lock = threading.Lock()
_specs_users = 0
_specs_original: Any = None
_specs_cache: "weakref.WeakKeyDictionary[type, tuple[frozenset[Any], frozenset[Any]]]" = (
    weakref.WeakKeyDictionary())


def _cached_get_dofn_specs(dofn: Any) -> tuple[set[Any], set[Any]]:
    own = getattr(dofn, "__dict__", None)
    if own is None or any(isinstance(v, types.MethodType) for v in own.values()):
        specs: tuple[set[Any], set[Any]] = _specs_original(dofn)
        return specs
    cls = type(dofn)
    cached = _specs_cache.get(cls)
    if cached is None:
        state, timers = _specs_original(dofn)  # raises, uncached, for an invalid DoFn
        cached = _specs_cache[cls] = (frozenset(state), frozenset(timers))
    return set(cached[0]), set(cached[1])


# Every ParDo's construction reads the source of its DoFn's process method and scans it
# for yield and return (core._check_fn_use_yield_and_return, a warning's test): 1-4 ms
# per ParDo, and a batch pipeline builds ten or more. The answer depends only on the
# source of the code object, so it is kept per code object (held, so an id is not reused).
_yield_original: Any = None
_yield_cache: dict[int, tuple[Any, bool]] = {}
_YIELD_CACHE_SIZE = 4096


def _cached_yield_and_return(fn: Any) -> bool:
    import inspect
    try:
        code = getattr(inspect.unwrap(getattr(fn, "__func__", fn)), "__code__", None)
    except ValueError:  # a cycle of __wrapped__: Beam's own check says what it says
        code = None
    if code is None:
        answer: bool = _yield_original(fn)
        return answer
    cached = _yield_cache.get(id(code))
    if cached is not None and cached[0] is code:
        return bool(cached[1])
    answer = bool(_yield_original(fn))
    if len(_yield_cache) >= _YIELD_CACHE_SIZE:
        _yield_cache.clear()
    _yield_cache[id(code)] = (code, answer)
    return answer


@functools.cache
def dofn_checks_cacheable() -> bool:
    """Whether this Beam's DoFn checks are the module functions :func:`cached_dofn_specs`
    replaces: ``userstate.get_dofn_specs``, looked up by name by ``is_stateful_dofn``, and
    ``core._check_fn_use_yield_and_return``, called by ``ParDo.__init__``. Each that is
    there is cached; a WARNING names one that is not (once)."""
    from apache_beam.transforms import core, userstate
    missing = []
    stateful = getattr(getattr(userstate, "is_stateful_dofn", None), "__code__", None)
    if not callable(getattr(userstate, "get_dofn_specs", None)) or \
            "get_dofn_specs" not in getattr(stateful, "co_names", ()):
        missing.append("userstate.is_stateful_dofn no longer calls userstate.get_dofn_specs")
    if not callable(getattr(core, "_check_fn_use_yield_and_return", None)) or \
            "_check_fn_use_yield_and_return" not in core.ParDo.__init__.__code__.co_names:
        missing.append("ParDo.__init__ no longer calls core._check_fn_use_yield_and_return")
    return _fast_path("cached DoFn checks", missing)


@contextlib.contextmanager
def cached_dofn_specs() -> Iterator[None]:
    """Inside the block, Beam's ``userstate.get_dofn_specs`` answers once per DoFn class,
    and its yield-and-return check of a ParDo's ``process`` once per code object.

    Patches the module functions Beam's callers look up (``is_stateful_dofn``,
    ``validate_stateful_dofn``, ``ParDo.to_runner_api_parameter``; ``ParDo.__init__``);
    restored when the last user leaves the block. The specs cache holds classes weakly
    (a batch's DoFn classes unpickled by value come and go). Where
    :func:`dofn_checks_cacheable` finds one missing, Beam's own is left in place.
    """
    global _specs_users, _specs_original, _yield_original
    from apache_beam.transforms import core, userstate
    dofn_checks_cacheable()  # says once which one is left uncached
    with _specs_lock:
        if _specs_users == 0:
            _specs_original = getattr(userstate, "get_dofn_specs", None)
            if _specs_original is not None:
                userstate.get_dofn_specs = _cached_get_dofn_specs
            _yield_original = getattr(core, "_check_fn_use_yield_and_return", None)
            if _yield_original is not None:
                setattr(core, "_check_fn_use_yield_and_return", _cached_yield_and_return)
        _specs_users += 1
    try:
        yield
    finally:
        with _specs_lock:
            _specs_users -= 1
            if _specs_users == 0:
                if _specs_original is not None:
                    userstate.get_dofn_specs = _specs_original
                if _yield_original is not None:
                    setattr(core, "_check_fn_use_yield_and_return", _yield_original)
                _yield_cache.clear()


# FnApiRunner.run_stages builds a WorkerHandlerManager (gRPC servers, worker handlers, the
# runner's state) for every pipeline and closes it at the end, so each micro-batch paid
# for new servers, a new SDK harness per worker and a new BundleProcessor per stage.
# beam_zdl.worker_pool.WarmRunner keeps one manager for the batches of a run: these
# functions are the private parts of Beam that takes.
_manager_lock = threading.Lock()
_manager_users = 0
_manager_original: Any = None
_manager_current: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "beam_zdl_handler_manager", default=None)


@functools.cache
def handler_managers_reusable() -> bool:
    """Whether this Beam builds its WorkerHandlerManager the way
    :func:`reuse_handler_manager` expects: ``run_stages`` looks the class up by its
    module name, a runner builds a stage's bundle manager in ``_get_bundle_manager``
    (:func:`hooks_bundle_managers`), a bundle manager takes its cache tokens from a
    generator it holds (:func:`prefix_cache_tokens`), and a runner keeps its
    ``_provision_info`` (:func:`runner_provision_info`). False makes
    :class:`~beam_zdl.worker_pool.WarmRunner` build one per pipeline, as Beam does (a
    WARNING says so, once)."""
    import inspect
    from apache_beam.runners.portability.fn_api_runner import fn_runner, worker_handlers
    missing = []
    run_stages = inspect.unwrap(fn_runner.FnApiRunner.run_stages)
    if "WorkerHandlerManager" not in run_stages.__code__.co_names or \
            fn_runner.WorkerHandlerManager not in (worker_handlers.WorkerHandlerManager,
                                                   _manager_factory):
        missing.append("FnApiRunner.run_stages no longer builds fn_runner.WorkerHandlerManager")
    if "_cache_token_generator" not in fn_runner.BundleManager.__init__.__code__.co_names:
        missing.append("BundleManager no longer holds _cache_token_generator")
    if not hasattr(fn_runner.FnApiRunner, "_get_bundle_manager"):
        missing.append("FnApiRunner has no _get_bundle_manager")
    if "_provision_info" not in fn_runner.FnApiRunner.__init__.__code__.co_names:
        missing.append("FnApiRunner keeps no _provision_info")
    return _fast_path("runner session", missing)


def _manager_factory(environments: Any, provision_info: Any) -> Any:
    manager = _manager_current.get()
    if manager is None:
        return _manager_original(environments, provision_info)
    return manager


@contextlib.contextmanager
def reuse_handler_manager(manager: Any) -> Iterator[None]:
    """Inside the block, ``FnApiRunner.run_stages`` called in this context runs on
    ``manager`` instead of a new ``WorkerHandlerManager``; runs in other threads or
    contexts are untouched. Patches the module name ``fn_runner.WorkerHandlerManager``
    while any block is open."""
    global _manager_users, _manager_original
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    with _manager_lock:
        if _manager_users == 0:
            _manager_original = fn_runner.WorkerHandlerManager
            setattr(fn_runner, "WorkerHandlerManager", _manager_factory)
        _manager_users += 1
    token = _manager_current.set(manager)
    try:
        yield
    finally:
        _manager_current.reset(token)
        with _manager_lock:
            _manager_users -= 1
            if _manager_users == 0:
                setattr(fn_runner, "WorkerHandlerManager", _manager_original)


def clear_runner_state(state_servicer: Any) -> None:
    """Empty the runner side of the Fn API state (``StateServicer``): the side inputs and
    user state one pipeline wrote must not be seen by the next one run on the same
    WorkerHandlerManager. Re-runs ``StateServicer.__init__``, which only sets fields."""
    from apache_beam.runners.portability.fn_api_runner.worker_handlers import StateServicer
    StateServicer.__init__(state_servicer)


def prefix_cache_tokens(bundle_manager: Any, prefix: bytes) -> None:
    """Make the cache tokens a bundle manager sends start with ``prefix``.

    Beam numbers them from 1 for each bundle manager, and an SDK harness caches user
    state by token: a harness that outlives a pipeline would hand the next pipeline's
    stateful DoFn the state of the last one. A prefix per pipeline keeps them apart
    (within one pipeline nothing changes).
    """
    bundle_manager._cache_token_generator = _PrefixedTokens(
        bundle_manager._cache_token_generator, prefix)


class _PrefixedTokens:
    """Beam's cache token generator with a prefix on each token; thread-safe as Beam's is
    (a ParallelBundleManager's bundles draw from one generator in several threads)."""

    def __init__(self, tokens: Any, prefix: bytes) -> None:
        self._tokens, self._prefix = tokens, prefix
        self._lock = threading.Lock()

    def __iter__(self) -> "_PrefixedTokens":
        return self

    def __next__(self) -> Any:
        with self._lock:
            token = next(self._tokens)
        copy = type(token)()
        copy.CopyFrom(token)
        copy.token = self._prefix + token.token
        return copy


def hooks_bundle_managers(runner_class: _C) -> _C:
    """Class decorator for an FnApiRunner subclass that defines
    ``bundle_manager_made(self, manager)``: every bundle manager the runner builds for a
    stage (in ``FnApiRunner._get_bundle_manager``) passes through it before its first
    bundle (:class:`~beam_zdl.worker_pool.WarmRunner` prefixes its cache tokens there).
    On a Beam without that method nothing is hooked, and
    :func:`handler_managers_reusable` says False."""
    original = getattr(runner_class, "_get_bundle_manager", None)
    if original is None:
        return runner_class

    def _get_bundle_manager(self: Any, bundle_context_manager: Any) -> Any:
        manager = original(self, bundle_context_manager)
        self.bundle_manager_made(manager)
        return manager

    setattr(runner_class, "_get_bundle_manager", _get_bundle_manager)
    return runner_class


def runner_provision_info(runner: Any) -> Any:
    """What an FnApiRunner hands its WorkerHandlerManagers to provision workers with
    (``FnApiRunner._provision_info``): a manager built outside ``run_stages`` needs it."""
    return runner._provision_info


def filter_job_server_output(job_server: Any, log_filter: logging.Filter) -> None:
    """Have ``job_server`` (a ``SubprocessJobServer`` not started yet) pass every line of
    its process's output through ``log_filter`` (``_log_filter``, the hook Beam's Prism
    runner sets): Beam relays each line to the logger named after the job server's class,
    at INFO, from a thread whose function is ``log_stdout``; the filter may drop the
    record or change its level."""
    job_server._log_filter = log_filter


def register_worker_handler(urn: str, payload_type: Optional[type], handler: type) -> None:
    """Make the FnApiRunner serve environments of ``urn`` with ``handler`` (a
    ``WorkerHandler`` built from the environment's payload parsed as ``payload_type``):
    ``WorkerHandler.register_environment``, a process-wide registry of Beam's. Called
    again with the same arguments it changes nothing."""
    from apache_beam.runners.portability.fn_api_runner.worker_handlers import WorkerHandler
    WorkerHandler.register_environment(urn, payload_type)(handler)


def abort_control_requests(handler: Any, error: Exception) -> None:
    """Fail every control request ``handler``'s runner is waiting on with ``error``
    (``ControlConnection.abort`` of its ``control_conn``): without an answer from a dead
    worker, a stage with no outputs would wait forever.

    Raises:
        RuntimeError: requests were added while they were failed (call again).
    """
    handler.control_conn.abort(error)


# The FnApiRunner feeds every Impulse of a pipeline one empty element (b""), as data from
# the runner, not as part of the stage. beam_zdl.worker_pool.WarmRunner hands a chosen
# Impulse other bytes instead (a batch's ranges), so the stage reading them is the same in
# every batch and its bundle processors are reused (see beam_zdl.worker_pool).
_impulse_lock = threading.Lock()
_impulse_users = 0
_impulse_original: Any = None
_impulse_current: contextvars.ContextVar[Optional[dict[str, bytes]]] = contextvars.ContextVar(
    "beam_zdl_impulse_payloads", default=None)


@functools.cache
def impulse_payloads_supported() -> bool:
    """Whether this Beam's FnApiRunner enqueues an Impulse's element the way
    :func:`impulse_payloads` expects: in ``_enqueue_stage_initial_inputs`` of its execution
    context, as an encoded ``WindowedValue(b"")`` in a ``ListBuffer`` of the stage's ready
    inputs, keyed by the Impulse's name. False makes a batch's read take its ranges from
    a ``Create`` (a WARNING says so, once)."""
    import inspect
    from apache_beam.runners import common
    from apache_beam.runners.portability.fn_api_runner import execution, translations
    enqueue = getattr(execution.FnApiRunnerExecutionContext, "_enqueue_stage_initial_inputs",
                      None)
    missing = []
    if enqueue is None:
        missing.append("FnApiRunnerExecutionContext has no _enqueue_stage_initial_inputs")
    elif not {"ENCODED_IMPULSE_VALUE", "ready_inputs"} <= set(
            inspect.unwrap(enqueue).__code__.co_names):
        missing.append("_enqueue_stage_initial_inputs no longer enqueues ENCODED_IMPULSE_VALUE "
                       "in ready_inputs")
    queues = getattr(execution, "_ProcessingQueueManager", None)
    if queues is None or not hasattr(queues.KeyedQueue(), "_q"):
        missing.append("execution._ProcessingQueueManager.KeyedQueue holds no _q")
    if not hasattr(translations, "IMPULSE_BUFFER") or \
            not hasattr(common, "IMPULSE_VALUE_CODER_IMPL") or \
            not hasattr(execution.ListBuffer, "append"):
        missing.append("IMPULSE_BUFFER, IMPULSE_VALUE_CODER_IMPL or ListBuffer.append is gone")
    return _fast_path("impulse payloads", missing)


def _enqueue_with_payloads(context: Any, stage: Any) -> None:
    payloads = _impulse_current.get()
    if not payloads:
        _impulse_original(context, stage)
        return
    from apache_beam.runners import common
    from apache_beam.runners.portability.fn_api_runner import execution, translations
    from apache_beam.runners.worker.bundle_processor import DATA_INPUT_URN
    from apache_beam.transforms.window import GlobalWindows
    # Named before the original replaces the inputs' payloads with the data endpoint.
    ours = {t.unique_name: payloads[t.unique_name] for t in stage.transforms
            if t.spec.urn == DATA_INPUT_URN and t.spec.payload == translations.IMPULSE_BUFFER
            and t.unique_name in payloads}
    _impulse_original(context, stage)
    if not ours:
        return
    for name, inputs in context.queues.ready_inputs._q:
        if name != stage.name:
            continue
        for transform, payload in list(ours.items()):
            old = inputs.data[transform]
            buffer = execution.ListBuffer(old._coder_impl)
            buffer.append(common.IMPULSE_VALUE_CODER_IMPL.encode_nested(
                GlobalWindows.windowed_value(payload)))
            inputs.data[transform] = buffer
            del ours[transform]
        break
    if ours:
        raise RuntimeError(f"apache-beam: the Impulse input of {', '.join(ours)} was not "
                           "enqueued as beam_zdl.compat.impulse_payloads expects")


@contextlib.contextmanager
def impulse_payloads(payloads: dict[str, bytes]) -> Iterator[None]:
    """Inside the block, an FnApiRunner run in this context feeds each Impulse named in
    ``payloads`` (its full label) one element of those bytes instead of ``b""``; other
    Impulses and runs in other threads or contexts are untouched. Patches
    ``FnApiRunnerExecutionContext._enqueue_stage_initial_inputs`` while any block is open.

    Raises:
        RuntimeError: a named Impulse was enqueued in a way this does not know (a Beam
            that changed; :func:`impulse_payloads_supported` said so first).
    """
    global _impulse_users, _impulse_original
    from apache_beam.runners.portability.fn_api_runner import execution
    with _impulse_lock:
        if _impulse_users == 0:
            _impulse_original = execution.FnApiRunnerExecutionContext.__dict__[
                "_enqueue_stage_initial_inputs"]
            setattr(execution.FnApiRunnerExecutionContext, "_enqueue_stage_initial_inputs",
                    _enqueue_with_payloads)
        _impulse_users += 1
    token = _impulse_current.set(dict(payloads))
    try:
        yield
    finally:
        _impulse_current.reset(token)
        with _impulse_lock:
            _impulse_users -= 1
            if _impulse_users == 0:
                setattr(execution.FnApiRunnerExecutionContext, "_enqueue_stage_initial_inputs",
                        _impulse_original)



# PipelineOptions keeps the flags it was made from (_flags), their parse by its own class
# (_visible_options, an argparse Namespace) and the values all its views share
# (_all_options), in private fields. beam_zdl.batch_options builds a view from an earlier
# parse with them instead of parsing the flags again (about 2 ms a view, 20 views a batch).

@functools.cache
def option_views_memoizable() -> bool:
    """Whether :func:`view_from_parse` builds the view Beam's ``view_as`` builds (checked
    once, on a small options object). False makes
    :func:`beam_zdl.batch_options.batch_options` hand back the options as they are (a
    WARNING says so, once)."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    missing = []
    try:
        flags = ["--runner=Checked"]
        options = PipelineOptions(flags)
        beams = options.view_as(StandardOptions)
        view = view_from_parse(StandardOptions, flags, view_parse(beams), options_values(options))
        view.streaming = True
        if options_flags(options) != flags or view.runner != "Checked" or \
                not beams.streaming or options_values(beams) is not options_values(options):
            missing.append("a view built from a parse differs from view_as's")
    except (AttributeError, TypeError) as exc:
        missing.append(f"PipelineOptions' private fields changed ({exc})")
    return _fast_path("memoized option views", missing)


def options_flags(options: Any) -> Optional[list[str]]:
    """The flags ``options`` were made from (``_flags``; shared by its views), or None when
    they come from ``sys.argv``."""
    flags: Optional[list[str]] = options._flags
    return flags


def options_values(options: Any) -> dict[str, Any]:
    """The values ``options`` and every view of them share (``_all_options``): a value set
    in one view is set in all."""
    values: dict[str, Any] = options._all_options
    return values


def view_parse(view: Any) -> Any:
    """The parse of the flags by ``view``'s class (``_visible_options``, a Namespace)."""
    return view._visible_options


def view_from_parse(cls: type[_T], flags: Optional[list[str]], parse: Any,
                    values: dict[str, Any]) -> _T:
    """A view of class ``cls`` of options with these ``flags`` and shared ``values``, as
    ``PipelineOptions.view_as`` builds it but with the flags' ``parse`` by ``cls`` given
    (see :func:`view_parse`; the caller hands over a copy it owns) instead of parsed again.
    Values the parse has and ``values`` not yet are added to ``values``, as ``view_as``
    does."""
    view: Any = cls.__new__(cls)
    view._flags = flags
    view._visible_options = parse
    for name in view._visible_option_list():
        if name not in values:
            values[name] = getattr(parse, name)
    view._all_options = values
    built: _T = view
    return built
