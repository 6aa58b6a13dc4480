"""The public API: keyword arguments like Beam's own KafkaIO, or flags; I/O only in
expand; errors naming the argument; a typed package."""

from __future__ import annotations

import ast
import subprocess
import sys
import threading
import time
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

import beam_zdl
from beam_zdl.errors import ConfigError
from beam_zdl.options import ZdlOptions
from beam_zdl.receiver import Receiver
from beam_zdl.runners import pipeline_runner

ROOT = Path(__file__).resolve().parents[1]


def _offsets(p, read, label="Offsets"):
    return p | read | label >> beam.Map(lambda r: (r.partition, r.offset))


def _expected(kafka, topic):
    return [(p, o) for p, end in kafka.end_offsets(topic).items() for o in range(end)]


def _run(options, build):
    with beam.Pipeline(runner=pipeline_runner(options), options=options) as p:
        build(p)


def test_beam_style_keywords_need_no_flags(kafka):
    """As with apache_beam.io.kafka.ReadFromKafka: the common case is an import change."""
    topic = kafka.create_topic(partitions=2)
    kafka.produce(topic, ((None, f"v{i}".encode(), i % 2) for i in range(50)))
    read = beam_zdl.ReadFromKafka(
        consumer_config={"bootstrap.servers": kafka.bootstrap_servers,
                         "group.id": f"g-{topic}", "auto.offset.reset": "earliest"},
        topics=[topic])

    _run(ZdlOptions([]), lambda p: assert_that(_offsets(p, read),
                                               equal_to(_expected(kafka, topic))))


def test_keywords_override_flags_and_from_options_reads_flags(kafka):
    topic = kafka.create_topic(partitions=1)
    kafka.produce(topic, ((None, b"x", 0) for _ in range(20)))
    flags = ZdlOptions([f"--bootstrap_servers={kafka.bootstrap_servers}",
                        "--topics=not-this-one", "--starting_offsets=latest"])

    def build(p):
        by_keywords = beam_zdl.ReadFromKafka(topics=topic, starting_offsets="earliest",
                                             options=flags)
        by_flags = beam_zdl.ReadFromKafka.from_options(flags, topics=topic,
                                                       max_records_per_partition=5)
        assert_that(_offsets(p, "Keywords" >> by_keywords, "K"), equal_to(_expected(kafka, topic)),
                    label="AllRecords")
        # latest from the flags: nothing to read
        assert_that(_offsets(p, "Flags" >> by_flags, "F"), equal_to([]), label="Nothing")

    _run(flags, build)


def test_read_from_wal_keywords_and_from_options(kafka, tmp_path):
    topic = kafka.create_topic(partitions=2)
    kafka.produce(topic, ((None, f"v{i}".encode(), i % 2) for i in range(40)))
    wal = str(tmp_path / "wal")
    options = ZdlOptions([f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
                          f"--wal_dir={wal}", "--zdl_mode=wal", f"--consumer_group=g-{topic}",
                          "--starting_offsets=earliest"])
    from beam_zdl.options import ZdlConfig
    Receiver(ZdlConfig.from_options(options)).run(threading.Event(), drain_to_end=True)

    def build(p):
        expected = _expected(kafka, topic)
        assert_that(_offsets(p, "Dir" >> beam_zdl.ReadFromWal(wal_dir=wal), "D"), equal_to(expected),
                    label="Dir")
        assert_that(_offsets(p, "Opts" >> beam_zdl.ReadFromWal.from_options(options), "O"),
                    equal_to(expected), label="Opts")

    _run(options, build)


def test_construction_does_no_io():
    """Nothing listens at these addresses: building the transforms must not notice."""
    started = time.monotonic()
    beam_zdl.ReadFromKafka(bootstrap_servers="127.0.0.1:1", topics="t")
    beam_zdl.ReadFromWal(wal_dir="hdfs://127.0.0.1:1/nowhere")
    beam_zdl.ReadFromWal(wal_dir="gs://no-such-bucket/wal")
    assert time.monotonic() - started < 5  # a storage or Kafka call would time out or raise


@pytest.mark.parametrize("kwargs, message", [
    (dict(topics=123), r"ReadFromKafka\(topics=\.\.\.\) must be a topic name"),
    (dict(topics="t", consumer_config=["x"]), r"ReadFromKafka\(consumer_config=\.\.\.\) must "
                                              "be a dict"),
    (dict(topics="t", max_records_per_partition="5"), r"max_records_per_partition=\.\.\.\) "
                                                      "must be an int"),
    (dict(topics="t", fail_on_data_loss="no"), r"fail_on_data_loss=\.\.\.\) must be True"),
    (dict(topics="t", bootstrap_servers="a:1", consumer_config={"bootstrap.servers": "b:1"}),
     r"bootstrap.servers='b:1' means bootstrap_servers=b:1, but bootstrap_servers=a:1 is "
     "given: they disagree"),
])
def test_bad_arguments_are_named_at_construction(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        beam_zdl.ReadFromKafka(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(topics="t", starting_offsets="sometimes"),
     r"ReadFromKafka\(starting_offsets=\.\.\.\) must be earliest, latest, committed"),
    (dict(topics="t", consumer_config={"enable.auto.commit": True}),
     r"ReadFromKafka\(consumer_config=\.\.\.\) may not set 'enable.auto.commit'"),
])
def test_bad_arguments_are_named_when_the_pipeline_is_built(kwargs, message):
    p = beam.Pipeline(options=ZdlOptions([]))
    with pytest.raises(ConfigError, match=message):
        _ = p | beam_zdl.ReadFromKafka(**kwargs)


def test_read_from_wal_needs_exactly_one_input():
    with pytest.raises(ConfigError, match="exactly one of wal_dir= .* and segments="):
        beam_zdl.ReadFromWal()
    with pytest.raises(ConfigError, match="exactly one of"):
        beam_zdl.ReadFromWal(wal_dir="/w", segments=["/w/seg-00000001-000000000000.wal"])


def test_package_is_typed_and_every_public_name_is_visible_to_type_checkers():
    assert (ROOT / "beam_zdl" / "py.typed").exists()
    tree = ast.parse((ROOT / "beam_zdl" / "__init__.py").read_text())
    checked = {alias.asname or alias.name
               for node in ast.walk(tree) if isinstance(node, ast.If)
               and getattr(node.test, "id", "") == "TYPE_CHECKING"
               for stmt in node.body if isinstance(stmt, ast.ImportFrom)
               for alias in stmt.names}
    assert checked == set(beam_zdl.__all__)
    for name in beam_zdl.__all__:
        assert getattr(beam_zdl, name) is not None


def test_importing_beam_and_beam_zdl_prints_nothing():
    """Beam's import warned "apitools not found ..." (a root-logger warning that also
    set logging to WARNING) unless google-apitools is installed: it is a dependency."""
    import subprocess
    import sys
    proc = subprocess.run(
        [sys.executable, "-c", "import logging, apache_beam, beam_zdl, beam_zdl.io; "
                               "print(logging.getLogger().handlers)"],
        capture_output=True, text=True, timeout=120, check=True)
    assert proc.stderr == ""
    assert proc.stdout.strip() == "[]"  # nothing configured the root logger


def _beam_zdl_modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for p in (ROOT / "beam_zdl").rglob("*.py")
            if "v1" not in p.parts and "testing" not in p.parts}


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for module, path in _beam_zdl_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("beam_zdl"):
                offenders += [f"{module}: from {node.module} import {a.name}"
                              for a in node.names if a.name.startswith("_")]
    assert offenders == []


def test_no_class_overrides_a_private_method_of_another_modules_class():
    """A base class other modules extend offers public hooks (BatchLoop's abstract
    methods): a subclass elsewhere overrides none of its private names."""
    import importlib
    import inspect
    offenders = []
    for module in _beam_zdl_modules():
        loaded = importlib.import_module(module)
        for cls in vars(loaded).values():
            if not inspect.isclass(cls) or cls.__module__ != module:
                continue
            for base in cls.__mro__[1:]:
                if not base.__module__.startswith("beam_zdl") or base.__module__ == module:
                    continue
                offenders += [f"{module}.{cls.__name__}.{name} overrides {base.__module__}."
                              f"{base.__name__}.{name}" for name in vars(cls)
                              if name.startswith("_") and not name.startswith("__")
                              and name in vars(base) and name != "_abc_impl"]
    assert offenders == []


# Private names of other libraries that are theirs to offer: Beam's documented hook for
# options classes (STYLE.md), the os module's exit without clean-up.
_FOREIGN_PRIVATE_ALLOWED = {"_add_argparse_args", "_exit"}


def _foreign_imports(tree: ast.AST) -> dict[str, tuple[str, str | None]]:
    imported: dict[str, tuple[str, str | None]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not (node.module or "").startswith("beam_zdl"):
            imported.update({a.asname or a.name: (node.module or "", a.name) for a in node.names})
        elif isinstance(node, ast.Import):
            imported.update({a.asname or a.name.split(".")[0]: (a.name, None)
                             for a in node.names if not a.name.startswith("beam_zdl")})
    return imported


def _foreign_class(expr: ast.expr, imported: dict[str, tuple[str, str | None]]) -> type | None:
    import importlib
    import inspect
    path = []
    while isinstance(expr, ast.Attribute):
        path.append(expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name) or expr.id not in imported:
        return None
    module, name = imported[expr.id]
    found: object = importlib.import_module(module)
    for attr in ([name] if name else []) + path[::-1]:
        found = getattr(found, attr, None)
    return found if inspect.isclass(found) else None


def _private_names_of(cls: type) -> set[str]:
    """The private names a foreign class and its foreign bases define or use."""
    import inspect
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass.__module__.startswith("beam_zdl") or klass is object:
            continue
        names |= set(vars(klass))
        for value in vars(klass).values():
            code = getattr(inspect.unwrap(value) if callable(value) else value, "__code__", None)
            names |= set(code.co_names) if code is not None else set()
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_only_compat_touches_private_names_of_beam_and_other_libraries():
    """compat.py is the one door to Beam's internals: elsewhere no import of a private
    name from another library, no private attribute of an imported module, and no class
    that extends a library's class reads, sets or overrides a private name of it."""
    offenders = []
    for module, path in _beam_zdl_modules().items():
        if module == "beam_zdl.compat":
            continue
        tree = ast.parse(path.read_text())
        imported = _foreign_imports(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in {m for m, _ in
                                                                   imported.values()}:
                offenders += [f"{module}:{node.lineno} import {a.name}" for a in node.names
                              if a.name.startswith("_")]
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and \
                    not node.attr.startswith("__") and isinstance(node.value, ast.Name) and \
                    node.value.id in imported and node.attr not in _FOREIGN_PRIVATE_ALLOWED:
                offenders.append(f"{module}:{node.lineno} {node.value.id}.{node.attr}")
            elif isinstance(node, ast.ClassDef):
                theirs: set[str] = set()
                for base in node.bases:
                    cls = _foreign_class(base, imported)
                    theirs |= _private_names_of(cls) if cls is not None else set()
                for inner in ast.walk(node):
                    name = (inner.name if isinstance(inner, ast.FunctionDef) else
                            inner.attr if isinstance(inner, ast.Attribute) else None)
                    if name in theirs - _FOREIGN_PRIVATE_ALLOWED:
                        offenders.append(f"{module}:{inner.lineno} {node.name}.{name}")
    assert offenders == [], "use beam_zdl.compat for these: " + ", ".join(offenders)


# The layers of docs/development.md's "Package layout", bottom first: a module imports
# only modules of its own layer or of a layer below (the cycle test orders a layer).
_LAYERS: list[tuple[str, set[str]]] = [
    ("base: errors, names, the element type", {
        "errors", "framing", "metrics", "chaos", "secrets", "logs", "compat", "monitoring",
        "records", "lean"}),
    ("durable formats and storage", {
        "storage", "coordinator", "trackers", "wal", "wal.format", "wal.reader",
        "wal.writer", "wal.directory", "wal.epochs"}),
    ("Kafka and configuration", {"kafka", "positions", "config", "options", "ranges",
                                 "batch"}),
    ("readers and the receiver", {
        "decode", "direct", "streaming", "wal_read", "receiver", "receiver_process"}),
    ("runners", {"batch_options", "worker_pool", "runners", "external_pool"}),
    ("public transforms", {"io", "kafka_sink"}),
    ("the micro-batch driver", {
        "batch_progress", "progress_history", "report", "microbatch", "microbatch.progress",
        "microbatch.loop", "microbatch.direct_mode", "microbatch.wal_mode",
        "microbatch.run", "microbatch.batch_ranges"}),
    ("faces", {"", "cli"}),  # "": beam_zdl itself
]
# Imports that still point up, each to be removed (and then taken off this list).
_UPWARD_KNOWN: set[tuple[str, str]] = set()


def _import_graph() -> dict[str, set[str]]:
    modules = _beam_zdl_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            graph[module] |= {n for n in names if n in modules and n != module}
    return graph


def test_imports_go_down_the_stated_layers():
    short = lambda m: m.removeprefix("beam_zdl").removeprefix(".")  # noqa: E731
    layer = {m: i for i, (_, members) in enumerate(_LAYERS) for m in members}
    graph = {short(m): {short(t) for t in targets} for m, targets in _import_graph().items()}
    unplaced = sorted(m for m in graph if m not in layer)
    assert not unplaced, f"place these modules in a layer of _LAYERS: {unplaced}"
    upward = {(m, t) for m, targets in graph.items() for t in targets if layer[t] > layer[m]}
    assert upward - _UPWARD_KNOWN == set(), "imports pointing up: " + ", ".join(
        f"{m} ({_LAYERS[layer[m]][0]}) -> {t} ({_LAYERS[layer[t]][0]})"
        for m, t in sorted(upward - _UPWARD_KNOWN))
    assert _UPWARD_KNOWN <= upward, f"gone, take off _UPWARD_KNOWN: {_UPWARD_KNOWN - upward}"


def test_import_graph_has_no_cycle():
    graph = _import_graph()
    # The package face (beam_zdl/__init__.py) imports only under TYPE_CHECKING.
    graph.pop("beam_zdl", None)
    seen: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node: str, stack: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if seen.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(
                    stack[stack.index(nxt):] + [nxt]))
            if nxt not in seen:
                visit(nxt, stack + [nxt])
        seen[node] = 2

    for module in sorted(graph):
        if module not in seen:
            visit(module, [module])


def test_the_public_read_knows_no_runner():
    """ReadFromKafka is runner-agnostic: importing it loads neither the micro-batch warm
    runner nor Beam's FnApiRunner (the micro-batch driver chooses how ranges are fed)."""
    proc = subprocess.run([sys.executable, "-c", (
        "import sys, beam_zdl.io\n"
        "print(sorted(m for m in sys.modules if m == 'beam_zdl.worker_pool' "
        "or m.endswith('fn_api_runner.fn_runner')))")],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_every_error_is_a_zdl_error_and_public() -> None:
    """Users catch ZdlError for all of them, or a subclass for one actionable case."""
    from beam_zdl import errors
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.ZdlError), name
    assert {"TopicNotFoundError", "WalOverlapError", "SinkFencedError",
            "SinkConflictError"} <= set(beam_zdl.__all__)


def test_a_missing_topic_to_read_is_a_topic_not_found_error(kafka):
    from beam_zdl import kafka as kafka_
    from beam_zdl.errors import TopicNotFoundError
    consumer = kafka_.new_consumer(kafka.bootstrap_servers, "g-missing-topic")
    try:
        with pytest.raises(TopicNotFoundError, match="topic 'no-such-topic-y' does not exist"):
            kafka_.partitions_of(consumer, ["no-such-topic-y"], kafka.bootstrap_servers)
    finally:
        consumer.close()
