"""Every use of a private Apache Beam or client-library API, behind one door.

beam_zdl depends on ``apache-beam>=2.77,<3`` and ``google-cloud-storage>=3``;
a minor release may change what is private without notice. Each function
here wraps one such use, says why it is needed, and has a test in
``tests/test_compat.py`` that fails naming the installed version when the
private API changes. Nothing else in beam_zdl touches these internals. Beam
is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import threading
import types
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional

if TYPE_CHECKING:  # imported lazily: storage (and the CLI) use this module without Beam
    from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker

__all__ = ["windowed_value_maker", "set_tracker_range", "tracker_last_attempt",
           "tracker_checkpointed", "mark_tracker_checkpointed", "gcs_transient_predicate",
           "cached_dofn_specs", "handler_managers_reusable", "reuse_handler_manager",
           "clear_runner_state", "prefix_cache_tokens", "impulse_payloads_supported",
           "impulse_payloads"]


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


@contextlib.contextmanager
def cached_dofn_specs() -> Iterator[None]:
    """Inside the block, Beam's ``userstate.get_dofn_specs`` answers once per DoFn class,
    and its yield-and-return check of a ParDo's ``process`` once per code object.

    Patches the module functions Beam's callers look up (``is_stateful_dofn``,
    ``validate_stateful_dofn``, ``ParDo.to_runner_api_parameter``; ``ParDo.__init__``);
    restored when the last user leaves the block. The specs cache holds classes weakly
    (a batch's DoFn classes unpickled by value come and go).
    """
    global _specs_users, _specs_original, _yield_original
    from apache_beam.transforms import core, userstate
    with _specs_lock:
        if _specs_users == 0:
            _specs_original = userstate.get_dofn_specs
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


def handler_managers_reusable() -> bool:
    """Whether this Beam builds its WorkerHandlerManager the way
    :func:`reuse_handler_manager` expects: ``run_stages`` looks the class up by its
    module name, and a bundle manager takes its cache tokens from a generator it
    holds. False makes :class:`~beam_zdl.worker_pool.WarmRunner` build one per
    pipeline, as Beam does."""
    import inspect
    from apache_beam.runners.portability.fn_api_runner import fn_runner, worker_handlers
    run_stages = inspect.unwrap(fn_runner.FnApiRunner.run_stages)
    return ("WorkerHandlerManager" in run_stages.__code__.co_names
            and fn_runner.WorkerHandlerManager in (worker_handlers.WorkerHandlerManager,
                                                   _manager_factory)
            and "_cache_token_generator" in fn_runner.BundleManager.__init__.__code__.co_names
            and hasattr(fn_runner.FnApiRunner, "_get_bundle_manager"))


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
    inputs, keyed by the Impulse's name."""
    import inspect
    from apache_beam.runners import common
    from apache_beam.runners.portability.fn_api_runner import execution, translations
    enqueue = getattr(execution.FnApiRunnerExecutionContext, "_enqueue_stage_initial_inputs",
                      None)
    if enqueue is None or not hasattr(execution, "_ProcessingQueueManager"):
        return False
    names = inspect.unwrap(enqueue).__code__.co_names
    return ("ENCODED_IMPULSE_VALUE" in names and "ready_inputs" in names
            and hasattr(translations, "IMPULSE_BUFFER")
            and hasattr(common, "IMPULSE_VALUE_CODER_IMPL")
            and hasattr(execution.ListBuffer, "append")
            and hasattr(execution._ProcessingQueueManager.KeyedQueue(), "_q"))


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

