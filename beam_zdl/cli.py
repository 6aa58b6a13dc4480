"""The ``beam-zdl`` command: look into checkpoints and WAL directories.

Sub-commands::

    beam-zdl inspect <checkpoint_dir> [--wal_dir URI] [--json]
        config, current epoch, last completed batch, pending batches with their
        offset ranges or WAL segments, the recent batches' progress records, and
        the WAL segments with their sizes;
        first checks every checkpoint file and exits 1 naming the damaged ones.
    beam-zdl migrate <old_checkpoint_dir> <new_checkpoint_dir> [--json]
        copies a format-1 (unframed) checkpoint into a new directory in the
        current, checksummed format; the old one is only read.
    beam-zdl verify <wal_uri> [--allow_empty] [--json]
        checks every frame of every segment of a WAL directory (or one segment);
        exits 1 naming the segment and byte of each corruption found.
    beam-zdl report <checkpoint_dir> [-o report.html]
        one self-contained HTML file charting the progress history (rows/s,
        batch duration by step, records per batch, lag per partition) with the
        slowest batches and the replays; needs the ``report`` extra (matplotlib).
    beam-zdl receive --topics=... --wal_dir=URI [other ZdlOptions flags]
        runs a WAL-mode receiver (the same one run_micro_batches starts in a
        child process) until Ctrl-C or SIGTERM, logging records/s and segments sealed;
        --drain_to_end (or an explicit --trigger=available_now) stops once the
        group has committed every partition up to the end offsets seen at start
        (sealed here or by another receiver). --metrics_port serves /metrics and
        /healthz (docs/monitoring.md).

Every command takes ``--log_format=text|json`` (json: one JSON object per log
line on stderr).

Plain text is aligned for people; ``--json`` prints one JSON document for
machines. Exit codes: 0 fine, 1 corruption (or nothing to verify), 2 bad usage
or unreadable storage.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import logging
import sys
from typing import Any, Optional, Sequence, TextIO

import beam_zdl
import beam_zdl.kafka as kafka
from beam_zdl.config import add_zdl_arguments
from beam_zdl.coordinator import CheckpointCoordinator, migrate_format1
from beam_zdl.errors import CheckpointCorruptionError, ConfigError, WalCorruptionError, ZdlError
from beam_zdl.v1 import checkpoint_pb2
from beam_zdl.wal import SegmentInfo, list_segments, parse_segment_name, verify_segment

__all__ = ["main", "build_parser"]

_LOGGER = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CORRUPT = 1
EXIT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="beam-zdl", description="Inspect beam_zdl checkpoints and verify WAL segments.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {beam_zdl.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_SubParser)
    # Every sub-command takes --log_format (after its name, where users write it).
    common = _SubParser(add_help=False)
    common.add_argument("--log_format", choices=("text", "json"), default="text",
                        help="text: plain log lines; json: one JSON object per log line on "
                             "stderr")

    inspect = sub.add_parser(
        "inspect", parents=[common],
        help="show a checkpoint: config, epoch, completed and pending batches, WAL",
        description="Check every file of a checkpoint directory (magic, format version, "
                    "CRC32C) and exit 1 naming the damaged ones; otherwise show its config, "
                    "current epoch, last completed batch, pending batches (their offset ranges "
                    "or WAL segments), per partition the planned and completed offsets (with "
                    "--bootstrap_servers also the group's committed offset, the end offset and "
                    "the lag), the progress records of the last --retain_batches batches (a "
                    "damaged one is listed and skipped) and the WAL segments with their sizes. "
                    "Reads only; safe while a driver runs.")
    inspect.add_argument("checkpoint_dir", help="the --checkpoint_dir URI (path, gs://, hdfs://)")
    inspect.add_argument("--wal_dir", default=None,
                         help="WAL directory to list (default: the one in the checkpoint config)")
    inspect.add_argument("--bootstrap_servers", default=None,
                         help="a Kafka broker (host:port,...) to read the group's committed "
                              "offsets and the end offsets from, for the lag")
    inspect.add_argument("--consumer_config", default=None,
                         help="extra confluent-kafka settings as JSON (security; secrets as "
                              "${env:NAME} / ${file:PATH})")
    inspect.add_argument("--kafka_connect_timeout_s", type=float,
                         default=kafka.CONNECT_TIMEOUT_S,
                         help="how long to wait for the brokers' first answer before failing")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    inspect.set_defaults(func=_inspect)

    migrate = sub.add_parser(
        "migrate", parents=[common],
        help="copy a format-1 checkpoint into a new directory in the current format",
        description="Copy a checkpoint written by a beam_zdl older than checksummed checkpoint "
                    "files (format 1, unframed) into a new directory in the current format "
                    "(magic, version, CRC32C per file). Stop every driver and receiver on the "
                    "old directory first; it is only read. Then run with "
                    "--checkpoint_dir=<new dir>. Rerun after a failure.")
    migrate.add_argument("old_checkpoint_dir", help="the format-1 checkpoint directory URI")
    migrate.add_argument("new_checkpoint_dir", help="an empty directory URI for the copy")
    migrate.add_argument("--json", action="store_true", help="print JSON instead of text")
    migrate.set_defaults(func=_migrate)

    verify = sub.add_parser(
        "verify", parents=[common], help="check every frame of every WAL segment",
        description="Check the magic, CRCs, frame order and footer of every segment in a WAL "
                    "directory (or of one segment URI). Exits 1 naming segment and byte of "
                    "every corruption found.")
    verify.add_argument("wal_uri", help="a WAL directory or one seg-*.wal segment URI")
    verify.add_argument("--allow_empty", action="store_true",
                        help="exit 0 when there are no segments (default: exit 1, since an "
                             "empty directory is usually a wrong path)")
    verify.add_argument("--json", action="store_true", help="print JSON instead of text")
    verify.set_defaults(func=_verify)

    report = sub.add_parser(
        "report", parents=[common], help="write an HTML report with charts of a run's batches",
        description="Chart the progress history kept in a checkpoint directory (the last "
                    "--retain_batches batches): input and processed rows per second, batch "
                    "duration stacked by step, records per batch and lag per partition, with "
                    "the slowest batches and the replays. One self-contained HTML file (images "
                    "inline; opens without network). Needs matplotlib: pip install "
                    "'beam_zdl[report]'.")
    report.add_argument("checkpoint_dir", help="the --checkpoint_dir URI (path, gs://, hdfs://)")
    report.add_argument("-o", "--output", default="report.html",
                        help="the HTML file to write (default: report.html)")
    report.set_defaults(func=_report)

    receive = sub.add_parser(
        "receive",  # --log_format comes with the ZdlOptions flags
        help="run a WAL-mode receiver: Kafka → sealed WAL segments → commit",
        description="Consume --topics as a member of --consumer_group, append the records to "
                    "WAL segments under --wal_dir, and commit offsets only after a segment is "
                    "sealed. Takes the ZdlOptions flags of the pipeline (--bootstrap_servers, "
                    "--wal_dir, --wal_segment_*, --max_buffered_bytes, --checkpoint_dir, ...). "
                    "Runs until Ctrl-C or SIGTERM, then seals, commits and leaves the group.")
    receive.add_argument("--bootstrap_servers", default=kafka.DEFAULT_BOOTSTRAP_SERVERS,
                         help="Kafka brokers, host:port,... (Beam's flag in a pipeline)")
    add_zdl_arguments(receive)
    # The stand-alone receiver runs until stopped unless --trigger=available_now is given;
    # its mode is always wal.
    receive.set_defaults(trigger=None, zdl_mode="wal")
    receive.add_argument("--drain_to_end", action="store_true",
                         help="stop once the group has committed every partition of --topics "
                              "up to the end offsets seen at start (sealed by this receiver or "
                              "another; waits up to --drain_timeout_s for partitions other "
                              "members hold); an explicit --trigger=available_now means the same")
    receive.set_defaults(func=_receive)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``beam-zdl`` command.

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 fine, 1 corruption found, 2 usage or storage error.
    """
    from beam_zdl.logs import configure_logging
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        args.parser.error(_unknown_flags(args.parser, unknown))
    if args.log_format == "json" or not logging.getLogger().handlers:
        configure_logging(args.log_format)  # else the caller (a test, an app) set logging up
    try:
        code: int = args.func(args, sys.stdout)
        return code
    except ZdlError as exc:
        print(f"beam-zdl {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


class _DefaultsHelpFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to a flag's help, unless the help already says its default, or
    there is none to say (None: not given; a switch: off). Decided when the help is
    shown: ``set_defaults`` may change a default after the flag was added."""

    def add_argument(self, action: argparse.Action) -> None:
        text = action.help
        if text and text is not argparse.SUPPRESS and "default" not in text.lower() and \
                action.default not in (None, argparse.SUPPRESS) and action.nargs != 0:
            action = copy.copy(action)
            action.help = f"{text} (default: %(default)s)"
        super().add_argument(action)


class _SubParser(argparse.ArgumentParser):
    """A sub-command's parser: its help shows every flag's default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsHelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.set_defaults(parser=self)


def _unknown_flags(parser: argparse.ArgumentParser, unknown: Sequence[str]) -> str:
    """argparse's "unrecognized arguments" with, per flag, the closest one it knows."""
    import difflib
    import re
    known = sorted(set(re.findall(r"--\w+", parser.format_help())))
    said = []
    for arg in unknown:
        name = arg.split("=", 1)[0]
        close = difflib.get_close_matches(name, known, n=1) if name.startswith("--") else []
        said.append(f"{arg} (did you mean {close[0]}?)" if close else arg)
    return "unrecognized arguments: " + " ".join(said)


# --- inspect ---------------------------------------------------------------------------------

def _ms(ms: int) -> str:
    if not ms:
        return "-"
    stamp = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _mode(mode: int) -> str:
    return checkpoint_pb2.Mode.Name(mode).removeprefix("MODE_")


def _table(rows: list[list[str]], out: TextIO, indent: str = "  ") -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        print((indent + "  ".join(cells)).rstrip(), file=out)


def _partition_rows(coord: CheckpointCoordinator, config: checkpoint_pb2.CheckpointConfig,
                    args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per partition: planned and completed positions; with Kafka, committed, end and lag."""
    planned: dict[tuple[str, int], int] = {}
    completed: dict[tuple[str, int], int] = {}
    done = set(coord.completed_ids())
    for plan in coord.retained_plans():
        for r in plan.ranges:
            tp = (r.topic, r.partition)
            planned[tp] = max(planned.get(tp, 0), r.stop)
            if plan.batch_id in done:
                completed[tp] = max(completed.get(tp, 0), r.stop)
    committed: dict[tuple[str, int], Optional[int]] = {}
    ends: dict[tuple[str, int], int] = {}
    if args.bootstrap_servers:
        try:
            extra = json.loads(args.consumer_config) if args.consumer_config else {}
        except json.JSONDecodeError as exc:  # the value is not echoed: it may hold a secret
            raise ZdlError(f"--consumer_config is not valid JSON ({exc})") from None
        kafka.check_brokers(args.bootstrap_servers, extra, args.kafka_connect_timeout_s)
        consumer = kafka.new_consumer(args.bootstrap_servers, config.consumer_group, extra)
        try:
            partitions = kafka.partitions_of(consumer, config.topics, args.bootstrap_servers)
            ends = {tp: high for tp, (_, high) in kafka.watermarks(
                consumer, partitions, args.bootstrap_servers).items()}
            committed = kafka.committed_offsets(consumer, partitions, args.bootstrap_servers)
        finally:
            consumer.close()
    rows = []
    for tp in sorted(set(planned) | set(ends)):
        done_at = completed.get(tp, committed.get(tp))
        end = ends.get(tp)
        rows.append({"topic": tp[0], "partition": tp[1], "planned": planned.get(tp),
                     "completed": completed.get(tp), "committed": committed.get(tp),
                     "end": end, "lag": None if end is None else max(0, end - (done_at or 0))})
    return rows


def _plan_dict(plan: checkpoint_pb2.BatchPlan) -> dict[str, Any]:
    return {
        "batch_id": plan.batch_id, "mode": _mode(plan.mode), "epoch": plan.epoch,
        "created_ms": plan.created_ms, "options_fingerprint": plan.options_fingerprint,
        "ranges": [{"topic": r.topic, "partition": r.partition, "start": r.start, "stop": r.stop}
                   for r in plan.ranges],
        "segments": [{"uri": s.uri, "size_bytes": s.size_bytes, "record_count": s.record_count,
                      "spans": [{"topic": p.topic, "partition": p.partition,
                                 "first_offset": p.first_offset, "last_offset": p.last_offset}
                                for p in s.spans]}
                     for s in plan.segments],
    }


def _inspect(args: argparse.Namespace, out: TextIO) -> int:
    coord = CheckpointCoordinator(args.checkpoint_dir)
    if not coord.has_config():
        raise ZdlError(f"{args.checkpoint_dir} is not a beam_zdl checkpoint (no config.pb); "
                       "check the --checkpoint_dir you passed the pipeline")
    damaged = coord.damaged_files()
    if damaged:
        _print_damaged(args, damaged, out)
        return EXIT_CORRUPT
    config = coord.read_config()
    epoch = coord.current_epoch()
    claim = coord.epoch_claim(epoch) if epoch else {}
    completed = coord.completed_ids()
    last = coord.read_completion(completed[-1]) if completed else None
    pending = coord.pending()
    wal_dir = args.wal_dir or config.wal_dir or None
    segments: list[SegmentInfo] = list_segments(wal_dir) if wal_dir else []

    partitions = _partition_rows(coord, config, args)
    from beam_zdl.progress_history import read_history
    history = read_history(args.checkpoint_dir)
    if args.json:
        doc = {
            "checkpoint_dir": args.checkpoint_dir,
            "damaged": [],
            "config": {"format_version": config.format_version, "topics": list(config.topics),
                       "mode": _mode(config.mode), "consumer_group": config.consumer_group,
                       "wal_dir": config.wal_dir, "created_ms": config.created_ms},
            "epoch": {"current": epoch, "owner": claim.get("owner"),
                      "claimed_ms": claim.get("claimed_ms")},
            "completed": {"count": len(completed), "batch_ids": completed,
                          "last": None if last is None else {
                              "batch_id": last.batch_id, "records": last.records,
                              "epoch": last.epoch, "completed_ms": last.completed_ms}},
            "next_batch_id": coord.next_batch_id(),
            "pending": [_plan_dict(p) for p in pending],
            "partitions": partitions,
            "progress": [p.to_dict() for p in history.progress],
            "damaged_progress": [{"uri": d.uri, "reason": d.reason} for d in history.damaged],
            "wal": None if wal_dir is None else {
                "dir": wal_dir, "total_bytes": sum(s.size_bytes for s in segments),
                "segments": [{"name": s.name, "uri": s.uri, "size_bytes": s.size_bytes,
                              "epoch": s.epoch, "seq": s.seq} for s in segments]},
        }
        json.dump(doc, out, indent=2)
        print(file=out)
        return EXIT_OK

    _table([
        ["checkpoint", args.checkpoint_dir],
        ["topics", ", ".join(config.topics)],
        ["mode", _mode(config.mode)],
        ["group", config.consumer_group or "-"],
        ["wal dir", config.wal_dir or "-"],
        ["created", f"{_ms(config.created_ms)} (format {config.format_version})"],
        ["epoch", f"{epoch} by {claim.get('owner', '-')} at {_ms(claim.get('claimed_ms', 0))}"
         if epoch else "none claimed"],
        ["completed", "none" if last is None else
         f"last batch {last.batch_id}: {last.records} records at {_ms(last.completed_ms)} "
         f"(epoch {last.epoch}); {len(completed)} completed batches kept"],
        ["next batch", str(coord.next_batch_id())],
    ], out, indent="")

    if partitions:
        print("\npartitions:", file=out)
        rows = [["PARTITION", "PLANNED", "COMPLETED", "COMMITTED", "END", "LAG"]]
        rows.extend([f"{r['topic']}[{r['partition']}]"] + [
            "-" if r[k] is None else str(r[k])
            for k in ("planned", "completed", "committed", "end", "lag")] for r in partitions)
        _table(rows, out)
        if not args.bootstrap_servers:
            print("(pass --bootstrap_servers to show committed and end offsets and the lag)",
                  file=out)

    _print_pending(pending, out)
    _print_history(history, out)
    _print_wal(wal_dir, segments, out)
    return EXIT_OK


def _print_damaged(args: argparse.Namespace, damaged: list[CheckpointCorruptionError],
                   out: TextIO) -> None:
    """``inspect`` of a checkpoint with damaged files: only those, and what to do."""
    if args.json:
        json.dump({"checkpoint_dir": args.checkpoint_dir, "damaged": [
            {"uri": d.uri, "reason": d.reason, "advice": d.advice} for d in damaged]},
            out, indent=2)
        print(file=out)
        return
    print(f"checkpoint {args.checkpoint_dir}: {len(damaged)} damaged file(s)", file=out)
    for d in damaged:
        print(f"DAMAGED {d.uri}: {d.reason}", file=out)
    print(damaged[0].advice.replace("Nothing in it was used. ", ""), file=out)


def _print_pending(pending: list[checkpoint_pb2.BatchPlan], out: TextIO) -> None:
    print(f"\npending batches: {len(pending)}", file=out)
    if not pending:
        return
    rows = [["BATCH", "EPOCH", "CREATED", "MODE", "INPUT"]]
    for plan in pending:
        inputs = ([f"{r.topic}/{r.partition} [{r.start}, {r.stop}) = {r.stop - r.start} "
                   "records" for r in plan.ranges]
                  + [f"{s.uri} ({s.record_count} records, {_size(s.size_bytes)})"
                     for s in plan.segments]) or ["(empty)"]
        head = [str(plan.batch_id), str(plan.epoch), _ms(plan.created_ms), _mode(plan.mode)]
        rows.append(head + [inputs[0]])
        rows.extend(["", "", "", "", more] for more in inputs[1:])
    _table(rows, out)


def _print_wal(wal_dir: Optional[str], segments: list[SegmentInfo], out: TextIO) -> None:
    if wal_dir is None:
        print("\nWAL: none (direct mode; pass --wal_dir to list one)", file=out)
        return
    total = sum(s.size_bytes for s in segments)
    print(f"\nWAL segments in {wal_dir}: {len(segments)}, {_size(total)}", file=out)
    if segments:
        rows = [["SEGMENT", "EPOCH", "SEQ", "SIZE", "BYTES"]]
        rows.extend([s.name, str(s.epoch), str(s.seq), _size(s.size_bytes), str(s.size_bytes)]
                    for s in segments)
        _table(rows, out)


def _print_history(history: Any, out: TextIO) -> None:
    """The progress records kept in the checkpoint (last ``--retain_batches`` batches)."""
    print(f"\nrecent batches (progress records): {len(history.progress)}", file=out)
    if history.progress:
        rows = [["BATCH", "TRIGGERED", "RECORDS", "ROWS/S IN", "ROWS/S DONE", "PLAN S", "RUN S",
                 "COMPLETE S", "COMMIT S", "TOTAL S", "LAG", "DEAD", "LOST", "REPLAY"]]
        for p in history.progress:
            d = p.durations_s
            rows.append([str(p.batch_id), _ms(p.trigger_ms), str(p.records),
                         f"{p.input_rows_per_s:.0f}", f"{p.processed_rows_per_s:.0f}",
                         *(f"{d.get(k, 0.0):.3f}" for k in ("plan", "run", "complete",
                                                             "commit", "total")),
                         "-" if p.lag is None else str(p.lag), str(p.dead_letter_records),
                         str(p.data_loss_records), "yes" if p.replay else ""])
        _table(rows, out)
    for d in history.damaged:
        print(f"DAMAGED progress record {d.uri} (skipped): {d.reason}", file=out)


# --- report ----------------------------------------------------------------------------------

def _report(args: argparse.Namespace, out: TextIO) -> int:
    from beam_zdl.report import write_report
    path, batches = write_report(args.checkpoint_dir, args.output)
    print(f"wrote {path}: {batches} batches from {args.checkpoint_dir}", file=out)
    return EXIT_OK


# --- migrate ---------------------------------------------------------------------------------

def _migrate(args: argparse.Namespace, out: TextIO) -> int:
    written = migrate_format1(args.old_checkpoint_dir, args.new_checkpoint_dir)
    if args.json:
        json.dump({"old": args.old_checkpoint_dir, "new": args.new_checkpoint_dir,
                   "files": written}, out, indent=2)
        print(file=out)
    else:
        print(f"migrated {len(written)} files from {args.old_checkpoint_dir} (format 1) to "
              f"{args.new_checkpoint_dir}; run with --checkpoint_dir={args.new_checkpoint_dir}",
              file=out)
    return EXIT_OK


# --- verify ----------------------------------------------------------------------------------

def _verify(args: argparse.Namespace, out: TextIO) -> int:
    uri = args.wal_uri.rstrip("/")
    if parsed := parse_segment_name(uri):
        name = uri.rpartition("/")[2]
        segments = [SegmentInfo(name, uri, 0, *parsed)]
    else:
        segments = list_segments(uri)
    results: list[dict[str, Any]] = []
    bad = 0
    from tqdm import tqdm  # imported here: only verify shows a progress bar

    total_bytes = sum(s.size_bytes for s in segments)
    with tqdm(total=total_bytes or None, unit="B", unit_scale=True, desc="verify",
              file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        for seg in segments:
            try:
                header, footer = verify_segment(seg.uri)
                results.append({"uri": seg.uri, "ok": True, "records": footer.record_count,
                                "writer_id": header.writer_id, "epoch": header.epoch})
            except WalCorruptionError as exc:
                bad += 1
                results.append({"uri": seg.uri, "ok": False, "error": str(exc)})
                if not args.json:
                    bar.write(f"CORRUPT {exc}", file=out)
            bar.update(seg.size_bytes)
    records = sum(r.get("records", 0) for r in results)
    empty = not segments and not args.allow_empty
    if args.json:
        json.dump({"wal_uri": args.wal_uri, "segments": len(segments), "corrupt": bad,
                   "records": records, "bytes": total_bytes, "results": results}, out, indent=2)
        print(file=out)
    elif empty:
        print(f"no WAL segments (seg-*.wal) in {args.wal_uri}: wrong path? "
              "(pass --allow_empty if an empty WAL is expected)", file=out)
    else:
        status = "OK" if not bad else f"{bad} CORRUPT"
        print(f"verified {len(segments)} segments, {records} records, {_size(total_bytes)} "
              f"in {args.wal_uri}: {status}", file=out)
    return EXIT_CORRUPT if bad or empty else EXIT_OK


# --- receive ---------------------------------------------------------------------------------

def _receive(args: argparse.Namespace, out: TextIO) -> int:
    import signal
    import threading

    # Parsed without Beam: the receiver needs none, and importing it costs ~140 MB RSS.
    from beam_zdl.config import ZdlConfig
    from beam_zdl.receiver import Receiver
    # The pipeline's default trigger (available_now) is no reason to stop a stand-alone
    # receiver; a trigger the user wrote out is.
    explicit_trigger = args.trigger is not None
    values = vars(args)
    values["trigger"] = args.trigger or "available_now"
    config = ZdlConfig.from_values(values)
    if explicit_trigger and config.trigger == "continuous" and args.drain_to_end:
        raise ConfigError("--drain_to_end contradicts --trigger=continuous; "
                          "pass one of them")
    drain_to_end = args.drain_to_end or (explicit_trigger and config.trigger == "available_now")
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        _LOGGER.warning("signal %d: sealing, committing and leaving the group", signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    receiver = Receiver(config, name="beam-zdl-receive")
    server = None
    if config.metrics_port is not None:
        from prometheus_client import CollectorRegistry

        from beam_zdl.monitoring import MetricsServer, ReceiverCollector
        registry = CollectorRegistry()
        registry.register(ReceiverCollector(lambda: dataclasses.asdict(receiver.stats),
                                            lambda: receiver.buffered_bytes))
        server = MetricsServer(config.metrics_port, registry, receiver.heartbeat,
                               config.health_timeout_s).start()
    try:
        stats = receiver.run(stop, drain_to_end=drain_to_end)
    finally:
        if server is not None:
            server.stop()
    print(json.dumps(dataclasses.asdict(stats)), file=out)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
