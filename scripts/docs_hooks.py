"""mkdocs hooks (``hooks:`` in mkdocs.yml): the pages whose content comes from the code or
from the benchmark's JSON are filled in at build time, so they cannot drift.

* ``<!-- generated: options -->`` (docs/reference/options.md) becomes a section for each
  flag, read from the flag definitions themselves (:func:`beam_zdl.config.add_zdl_arguments`,
  plus Beam's ``--bootstrap_servers``): name, default, help text.
* ``<!-- generated: cli -->`` (docs/reference/cli.md) becomes ``beam-zdl --help`` and
  each sub-command's help, from :func:`beam_zdl.cli.build_parser`.
* ``<!-- generated: docstring beam_zdl/wal/format.py -->`` (docs/formats.md) becomes that
  module's docstring: the byte layouts live in the code, once.
* ``<!-- generated: bench-results -->``, ``bench-fixed-cost``, ``bench-scale``,
  ``bench-targets`` and ``bench-sink`` (docs/performance.md) become tables of
  ``bench/results.json`` and ``bench/scale.json``.

``tests/test_docs.py`` builds the site and checks that every flag and every figure is there.
"""

from __future__ import annotations

import argparse
import ast
import html
import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["on_page_content", "flag_rows", "options_table", "bench_results_table", "bench_fixed_cost_table",
           "bench_scale_table", "on_page_markdown"]


class _RecordingParser(argparse.ArgumentParser):
    """An ArgumentParser that remembers each ``add_argument`` call, in order."""

    def __init__(self) -> None:
        super().__init__(add_help=False)
        self.calls: list[tuple[tuple[str, ...], dict[str, Any]]] = []

    def add_argument(self, *names: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        self.calls.append((tuple(names), dict(kwargs)))
        return super().add_argument(*names, **kwargs)


def flag_rows() -> list[tuple[str, str, str]]:
    """(flag, default, help) of every beam_zdl flag, in definition order."""
    from beam_zdl.config import add_zdl_arguments
    parser = _RecordingParser()
    add_zdl_arguments(parser)
    rows = [("--bootstrap_servers", "localhost:9092",
             "Kafka brokers, host:port,... This is Apache Beam's own flag "
             "(KafkaStreamsRunnerOptions), which beam_zdl reuses rather than defining "
             "it twice; errors that cannot reach Kafka name the value used.")]
    for names, kwargs in parser.calls:
        flag = next(n for n in names if n.startswith("--"))
        default = kwargs.get("default")
        rows.append((flag, "none" if default is None else str(default).lower()
                     if isinstance(default, bool) else str(default),
                     " ".join(str(kwargs.get("help", "")).split())))
    return rows


def _cell(text: str) -> str:
    """Help text as Markdown that shows it as written (<epoch ms>, *, _ and | are not markup)."""
    text = html.escape(text, quote=False)
    for char in "\\`*_|[]":
        text = text.replace(char, "\\" + char)
    return text


def options_table() -> str:
    """One section per flag (an anchor each): its default, then its help text."""
    parts = []
    for flag, default, help_text in flag_rows():
        parts.append(f"### `{flag}`\n\nDefault: `{default}`\n\n{_cell(help_text)}\n")
    return "\n".join(parts)


def _load(name: str) -> dict[str, Any]:
    with open(ROOT / "bench" / name) as f:
        data: dict[str, Any] = json.load(f)
    return data


_PEERS = [
    ("bare_consumer", "bare confluent-kafka consume loop"),
    ("bare_consumer_tuned", "bare loop with direct mode's consumer settings"),
    ("direct_1_worker", "direct mode, 1 worker (in process)"),
    ("direct_2_workers", "direct mode, 2 workers (the driver and one worker process)"),
    ("direct_2_workers_batches", "direct mode, 2 workers, `--record_batches`"),
    ("direct_2_workers_lean", "direct mode, 2 workers, `BEAM_ZDL_LEAN_IMPORTS=1`"),
    ("wal_local", "WAL mode end to end, local disk (receiver child process, 2 workers)"),
    ("wal_gcs", "WAL mode end to end, GCS emulator"),
    ("receiver_rss", "WAL receiver alone (`beam-zdl receive`)"),
    ("quixstreams_exactly_once", "quixstreams, exactly-once"),
    ("quixstreams_at_least_once", "quixstreams, at-least-once"),
    ("spark_structured_streaming", "Spark Structured Streaming, availableNow, local[2]"),
    ("pyflink", "pyflink, bounded Kafka table, parallelism 2"),
    ("flink_local_streaming", "streaming on Flink `[local]` (from job submission)"),
    ("flink_cluster_streaming", "streaming on a Flink session cluster (from job submission)"),
]

_SINK_PEERS = [
    ("sink_bare_producer", "bare confluent-kafka produce loop (write only)"),
    ("sink_at_least_once", "Kafka → Kafka, `WriteToKafka` at-least-once"),
    ("sink_exactly_once", "Kafka → Kafka, `WriteToKafka` exactly-once"),
]


def _k(n: float) -> str:
    return f"{n / 1000:.0f}k"


def bench_results_table() -> str:
    data = _load("results.json")
    res = data["results"]
    bare = res["bare_consumer"]["records_per_s"]
    lines = [f"{data['records']:,} records of {data['value_bytes']} B in {data['partitions']} "
             f"partitions, {data['cores']} cores, Python {data['python']}; "
             f"{data.get('rounds', 'one run').split(';')[0]}.", "",
             "| reader | version | records/s | × bare loop | tree peak RSS | durable progress |",
             "| --- | --- | ---: | ---: | ---: | --- |"]
    for key, label in _PEERS:
        row = res.get(key)
        if not row or "records_per_s" not in row:
            continue
        durable = row.get("durable_progress")
        lines.append(
            f"| {label} | {row.get('version', 'beam_zdl' if key != 'bare_consumer' else 'confluent-kafka')} "
            f"| {_k(row['records_per_s'])} | {row['records_per_s'] / bare:.2f} "
            f"| {row['peak_tree_rss_mb']:,.0f} MB "
            f"| {'—' if durable is None else ('yes' if durable else 'NO')} |")
    rec = res.get("recovery")
    if rec:
        lines.append(f"\nRecovery: a driver SIGKILLed {rec['killed_after_s']:.1f} s into a run of "
                     f"{rec['batch_records']:,}-record batches, restarted, finished the replayed "
                     f"batch {rec['restart_to_first_batch_s']:.1f} s after its start and caught "
                     f"up after {rec['restart_to_catch_up_s']:.1f} s "
                     f"({rec['records_after_restart']:,} records after the restart).")
    for key, row in res.items():
        if "error" in row:
            lines.append(f"\n**{key}** was not measured: {row['error']}.")
    return "\n".join(lines)


def bench_sink_table() -> str:
    res = _load("results.json")["results"]
    bare = res.get("sink_bare_producer", {}).get("records_per_s")
    if not bare:
        return "(not in the last `bench/results.json`)"
    lines = ["| writer | records/s | × bare producer | tree peak RSS |",
             "| --- | ---: | ---: | ---: |"]
    for key, label in _SINK_PEERS:
        row = res.get(key)
        if row and "records_per_s" in row:
            lines.append(f"| {label} | {_k(row['records_per_s'])} "
                         f"| {row['records_per_s'] / bare:.2f} "
                         f"| {row['peak_tree_rss_mb']:,.0f} MB |")
    return "\n".join(lines)


def bench_fixed_cost_table() -> str:
    cost = _load("results.json")["results"]["batch_fixed_cost"]
    lines = ["| workers | fixed cost per batch | CPU per batch | workers ready after "
             "| first batch | later batches (median) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for key, label in (("1_worker", "1 (in process)"), ("2_worker", "2")):
        c = cost[key]
        lines.append(f"| {label} | {c['fixed_s_per_batch']:.2f} s | "
                     f"{c['fixed_cpu_s_per_batch']:.2f} s | {c['workers_ready_s']:.2f} s | "
                     f"{c['first_batch_s']:.2f} s | {c['median_later_batch_s']:.2f} s |")
    return "\n".join(lines)


def bench_scale_table() -> str:
    data = _load("scale.json")
    lines = ["| partitions | records | bare loop µs/record | direct, 2 workers µs/record "
             "| × bare (spread) | × tuned bare | `--record_batches` × tuned bare "
             "| tree peak RSS | lean |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for records in data["records"]:
        for parts in data["partitions"]:
            cell = data["throughput"].get(f"{parts}x{records}")
            if not cell:
                continue
            bare, direct = cell["bare_consumer"], cell["direct_2_workers"]
            spread = cell.get("direct_2_workers_to_bare")  # over rounds, when measured so
            ratio = (f"{spread['median']:.2f} ({spread['min']:.2f}–{spread['max']:.2f})"
                     if spread else f"{cell['direct_to_bare']:.2f}")
            tuned = cell.get("direct_2_workers_to_tuned")
            to_tuned = f"{tuned['median']:.2f}" if tuned else "–"
            batches = cell.get("direct_2_workers_batches_to_tuned")
            batches_to_tuned = f"{batches['median']:.2f}" if batches else "–"
            lean = cell.get("direct_2_workers_lean", {}).get("peak_tree_rss_mb")
            lean_rss = f"{lean:,.0f} MB" if lean else "–"
            lines.append(f"| {parts} | {records / 1e6:.0f}M | {bare['us_per_record']:.1f} "
                         f"| {direct['us_per_record']:.1f} | {ratio} | {to_tuned} "
                         f"| {batches_to_tuned} | {direct['peak_tree_rss_mb']:,.0f} MB "
                         f"| {lean_rss} |")
    return "\n".join(lines)


def bench_targets_table() -> str:
    data = _load("scale.json")
    lines = [f"Each target of the scale work as `bench.scale` printed it: the median of "
             f"{data['rounds']} interleaved rounds and the spread (min–max).", "",
             "| target | limit | median (spread) | |", "| --- | --- | ---: | --- |"]
    for t in data.get("targets", []):
        lines.append(f"| {t['target']} | {t['limit']} | {t['median']:.2f} "
                     f"({t['min']:.2f}–{t['max']:.2f}) | {'met' if t['met'] else '**missed**'} |")
    return "\n".join(lines)


def cli_reference() -> str:
    """``beam-zdl --help`` and each sub-command's ``--help``, from the parser itself."""
    import os
    from beam_zdl.cli import build_parser
    os.environ["COLUMNS"] = "96"  # argparse wraps help to the terminal's width
    parser = build_parser()
    parts = [f"```text\n$ beam-zdl --help\n{parser.format_help()}```"]
    for action in parser._actions:  # argparse lists sub-commands nowhere public
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                parts.append(f"## beam-zdl {name}\n\n```text\n$ beam-zdl {name} --help\n"
                             f"{sub.format_help()}```")
    return "\n\n".join(parts)


def module_docstring(path: str) -> str:
    """The module docstring of ``path`` (relative to the checkout), read without importing,
    as a text block: the byte layouts of the file formats are written there, once."""
    tree = ast.parse((ROOT / path).read_text())
    doc = ast.get_docstring(tree) or ""
    return f"Source: the module docstring of `{path}`.\n\n```text\n{doc}\n```"


_DOCSTRING = re.compile(r"<!-- generated: docstring (\S+) -->")

_MARKERS = {
    "<!-- generated: options -->": options_table,
    "<!-- generated: cli -->": cli_reference,
    "<!-- generated: bench-results -->": bench_results_table,
    "<!-- generated: bench-fixed-cost -->": bench_fixed_cost_table,
    "<!-- generated: bench-scale -->": bench_scale_table,
    "<!-- generated: bench-targets -->": bench_targets_table,
    "<!-- generated: bench-sink -->": bench_sink_table,
}


_ROLE = re.compile(r":(?:class|func|meth|mod|attr|exc|data):<code>~?([\w.]+)</code>")


def on_page_content(html_text: str, **kwargs: Any) -> str:
    """mkdocs hook: docstrings use Sphinx roles (:class:`~beam_zdl.X`); show just the name."""
    return _ROLE.sub(lambda m: f"<code>{m.group(1)}</code>", html_text)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """mkdocs hook: replace each marker with its generated table."""
    for marker, make in _MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return _DOCSTRING.sub(lambda m: module_docstring(m.group(1)), markdown)
