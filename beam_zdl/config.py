"""ZdlConfig: beam_zdl's flags and their validated, typed view, without Apache Beam.

:func:`add_zdl_arguments` defines every beam_zdl flag once, on any argparse
parser: :class:`~beam_zdl.options.ZdlOptions` adds them to Beam's pipeline
options, and :meth:`ZdlConfig.from_flags` parses them alone, so the
stand-alone receiver (``beam-zdl receive``) runs without importing Beam
(about 140 MB of resident memory). ``--bootstrap_servers`` is Beam's flag
(see :mod:`beam_zdl.options`); ``from_flags`` defines it alone, with Beam's
default.

:class:`ZdlConfig` is the validated view the rest of the package uses. Bad
values raise :class:`~beam_zdl.errors.ConfigError` naming the flag before
anything runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import beam_zdl.kafka as kafka
import beam_zdl.positions as positions
from beam_zdl.errors import ConfigError
from beam_zdl.secrets import literal_secrets

if TYPE_CHECKING:
    from apache_beam.options.pipeline_options import PipelineOptions

__all__ = ["ZdlConfig", "add_zdl_arguments", "map_client_keys", "MODES", "TRIGGERS",
           "LOG_FORMATS", "parse_bool", "flag_names", "near_misses"]

_LOGGER = logging.getLogger(__name__)

MODES = ("direct", "wal")
TRIGGERS = ("available_now", "continuous")
LOG_FORMATS = ("text", "json")
# Beam registers --bootstrap_servers (KafkaStreamsRunnerOptions) with this default;
# from_flags, which parses without Beam, gives it the same.
_BEAM_BOOTSTRAP_DEFAULT = kafka.DEFAULT_BOOTSTRAP_SERVERS

# Client settings that say what a beam_zdl flag says: taken as that flag (Beam's
# ReadFromKafka takes them in consumer_config). auto.offset.reset=earliest is Kafka's
# "the committed offset, else the log start": --starting_offsets=committed.
_MAPPED_KEYS = {"bootstrap.servers": "bootstrap_servers", "group.id": "consumer_group",
                "auto.offset.reset": "starting_offsets"}
_FLAG_DEFAULTS = {"bootstrap_servers": _BEAM_BOOTSTRAP_DEFAULT,
                  "starting_offsets": "committed", "consumer_group": None}
_SAID_MAPPED: set[str] = set()


def map_client_keys(consumer_config: Mapping[str, Any], given: Mapping[str, Any],
                    source: str = "--consumer_config", *,
                    explicit: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a user's consumer settings into what stays a client setting and flag values.

    The one rule for the settings a guarantee depends on (see :mod:`beam_zdl.kafka`,
    "Guarded settings"): ``bootstrap.servers``, ``group.id`` and
    ``auto.offset.reset=earliest`` become ``--bootstrap_servers``, ``--consumer_group``
    and ``--starting_offsets=committed`` (logged at INFO); beam_zdl's own values are
    dropped; any other guarded key or value is refused.

    Args:
        consumer_config: the user's confluent-kafka settings.
        given: the flag values so far, by flag name; a value other than the flag's
            default that disagrees with a mapped key is an error.
        source: where the settings came from, for messages.
        explicit: every value in ``given`` was given by the user (keyword arguments),
            so one that disagrees is an error even when it equals the flag's default.

    Returns:
        (the remaining client settings, {flag name: value} to apply).

    Raises:
        ConfigError: a refused key or value, or a mapped key that disagrees with its flag.
    """
    config = dict(consumer_config)
    mapped: dict[str, Any] = {}
    for key, name in _MAPPED_KEYS.items():
        if key not in config:
            continue
        value = config[key]
        if key == "auto.offset.reset":
            if str(value).strip().lower() not in ("earliest", "smallest", "beginning"):
                continue  # beam_zdl's own value is dropped, others refused, by the check below
            value = "committed"
        del config[key]
        current = given.get(name)
        if current is not None and str(current) != value and (
                explicit or current != _FLAG_DEFAULTS[name]):
            flag = f"{name}=" if explicit else f"--{name}="
            raise ConfigError(f"{source}: {key}={consumer_config[key]!r} means "
                              f"{flag}{value}, but {flag}{current} is given: they "
                              "disagree; give one of them")
        mapped[name] = value
        said = f"{source}: {key}={consumer_config[key]!r} taken as --{name}={value}"
        if said not in _SAID_MAPPED:  # once per process: options are validated per batch
            _SAID_MAPPED.add(said)
            _LOGGER.info("%s", said)
    return kafka.check_consumer_config(config, source), mapped


def parse_bool(text: str) -> bool:
    """A boolean flag's value: true/false, 1/0, yes/no, on/off (any case)."""
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


@dataclass(frozen=True)
class ZdlConfig:
    """The validated options. Build with :meth:`from_options` (Beam pipeline options) or
    :meth:`from_flags` (command-line flags, without Beam).

    The field defaults are the flags' defaults (:func:`add_zdl_arguments` reads them here).
    """

    bootstrap_servers: str
    topics: tuple[str, ...]
    consumer_group: str
    consumer_config: dict[str, Any] = field(default_factory=dict, repr=False)  # may hold secrets
    checkpoint_dir: str | None = None
    mode: str = "direct"
    wal_dir: str | None = None
    starting_offsets: str = "committed"
    ending_offsets: str | None = None
    max_records_per_partition: int = 0
    max_records_per_batch: int = 0
    batch_interval_s: float = 5.0
    trigger: str = "available_now"
    fail_on_data_loss: bool = True
    record_batches: bool = False
    max_batches: int = 0
    retain_batches: int = 100
    wal_segment_bytes: int = 16 * 1024 * 1024
    wal_segment_records: int = 100_000
    wal_segment_age_s: float = 2.0
    max_buffered_bytes: int = 64 * 1024 * 1024
    drain_timeout_s: float = 300.0
    partition_discovery_interval_s: float = 60.0
    idle_watermark_delay_s: float = 2.0
    kafka_connect_timeout_s: float = kafka.CONNECT_TIMEOUT_S
    metrics_port: int | None = None
    health_timeout_s: float = 300.0
    log_format: str = "text"

    @classmethod
    def from_options(cls, options: "PipelineOptions", *, need_checkpoint: bool = False,
                     overrides: Mapping[str, Any] | None = None,
                     source: str = "") -> "ZdlConfig":
        """Validate ``options``; raise ConfigError naming the first bad flag.

        Args:
            options: pipeline options holding the ZdlOptions flags.
            need_checkpoint: require ``--checkpoint_dir``.
            overrides: values that replace flags, by flag name without dashes (a
                transform's keyword arguments); ``None`` values are ignored.
                ``topics`` may be a list, ``consumer_config`` a dict.
            source: what the overrides came from, for errors (e.g. ``ReadFromKafka``):
                an error about an overridden value names ``source(name=...)``.
        """
        o: dict[str, Any] = options.get_all_options(retain_unknown_options=True)
        if "wal_segment_records" not in o:
            # Beam parses only the flags of option classes defined so far; unknown ones
            # would come back as untyped strings.
            raise ConfigError("beam_zdl's flags are not registered with Beam: import "
                              "beam_zdl.options (ZdlOptions) before reading the options")
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        o.update(given)
        try:
            return cls._validate(o, need_checkpoint)
        except ConfigError as exc:
            message = str(exc)
            for name in given:
                message = message.replace(f"--{name}", f"{source or 'argument'}({name}=...)")
            raise ConfigError(message) from None

    @classmethod
    def from_flags(cls, flags: Sequence[str], *, need_checkpoint: bool = False,
                   prog: str | None = None) -> "ZdlConfig":
        """Parse and validate command-line flags without Beam (``beam-zdl receive``).

        Flags that are not beam_zdl's (a Beam runner flag, say) are ignored, as Beam's
        own parsing keeps them aside.

        Args:
            flags: e.g. ``["--topics=orders", "--zdl_mode=wal", "--wal_dir=/data/wal"]``.
            need_checkpoint: require ``--checkpoint_dir``.
            prog: the program name in argparse's usage errors.

        Raises:
            ConfigError: a value is bad, naming the flag. SystemExit: argparse's own
                error for a value of the wrong type (exit code 2), as with Beam.
        """
        parser = argparse.ArgumentParser(prog=prog, allow_abbrev=False, add_help=False)
        parser.add_argument("--bootstrap_servers", default=_BEAM_BOOTSTRAP_DEFAULT,
                            help="Kafka brokers, host:port,... (Beam's flag).")
        add_zdl_arguments(parser)
        known, _ = parser.parse_known_args(list(flags))
        return cls._validate(vars(known), need_checkpoint)

    @classmethod
    def from_values(cls, values: Mapping[str, Any], *,
                    need_checkpoint: bool = False) -> "ZdlConfig":
        """Validate flag values an argparse parser holding :func:`add_zdl_arguments` (and
        ``--bootstrap_servers``) parsed, by flag name; other names are ignored."""
        return cls._validate(dict(values), need_checkpoint)

    @classmethod
    def _validate(cls, o: dict[str, Any], need_checkpoint: bool) -> "ZdlConfig":
        raw_topics = o.get("topics") or ""
        if isinstance(raw_topics, str):
            raw_topics = raw_topics.split(",")
        topics = tuple(str(t).strip() for t in raw_topics if str(t).strip())
        if not topics:
            raise ConfigError("--topics is required: a comma-separated list of Kafka topics")
        if isinstance(o.get("consumer_config"), Mapping):
            consumer_config = dict(o["consumer_config"])
        else:
            try:
                consumer_config = json.loads(o.get("consumer_config") or "{}")
            except json.JSONDecodeError as exc:
                # The value is not echoed: it may hold a password.
                raise ConfigError(f"--consumer_config is not valid JSON ({exc}); give a JSON "
                                  'object such as {"security.protocol": "SASL_SSL"}') from None
        if not isinstance(consumer_config, dict):
            raise ConfigError("--consumer_config must be a JSON object of confluent-kafka "
                              f"settings, got {type(consumer_config).__name__}")
        consumer_config, mapped = map_client_keys(consumer_config, o)
        o.update(mapped)
        _warn_literal_secrets(consumer_config)
        _choice(o, "zdl_mode", MODES)
        positions.parse(o["starting_offsets"], "--starting_offsets", topics)
        if o.get("ending_offsets"):
            positions.parse(o["ending_offsets"], "--ending_offsets", topics, end=True)
            if o["zdl_mode"] == "wal":
                raise ConfigError("--ending_offsets works in direct mode only: in WAL mode the "
                                  "receiver reads what arrives; use --zdl_mode=direct to "
                                  "reprocess a range")
        _choice(o, "trigger", TRIGGERS)
        for name in ("max_records_per_partition", "max_records_per_batch", "max_batches"):
            if o[name] < 0:
                raise ConfigError(f"--{name} must be >= 0, got {o[name]}")
        if o["retain_batches"] < 1:
            raise ConfigError(f"--retain_batches must be >= 1 (the last batch's plan holds "
                              f"where reading resumes), got {o['retain_batches']}")
        for name in ("batch_interval_s", "wal_segment_age_s", "drain_timeout_s"):
            if not o[name] > 0:
                raise ConfigError(f"--{name} must be > 0 seconds, got {o[name]}")
        if not o["partition_discovery_interval_s"] > 0:
            raise ConfigError("--partition_discovery_interval_s must be > 0 seconds, got "
                              f"{o['partition_discovery_interval_s']}")
        if not o["idle_watermark_delay_s"] >= 0:
            raise ConfigError("--idle_watermark_delay_s must be >= 0 seconds, got "
                              f"{o['idle_watermark_delay_s']}")
        if not o["kafka_connect_timeout_s"] >= 0:
            raise ConfigError("--kafka_connect_timeout_s must be >= 0 seconds (0 skips the "
                              f"check), got {o['kafka_connect_timeout_s']}")
        for name in ("wal_segment_bytes", "wal_segment_records", "max_buffered_bytes"):
            if o[name] <= 0:
                raise ConfigError(f"--{name} must be > 0, got {o[name]}")
        port = o.get("metrics_port")
        if port is not None and not 0 <= port <= 65535:
            raise ConfigError(f"--metrics_port must be a TCP port (0 picks a free one), "
                              f"got {port}")
        if not o.get("health_timeout_s", 1.0) > 0:
            raise ConfigError("--health_timeout_s must be > 0 seconds, got "
                              f"{o['health_timeout_s']}")
        _choice(o, "log_format", LOG_FORMATS)
        if need_checkpoint and not o.get("checkpoint_dir"):
            raise ConfigError("--checkpoint_dir is required: where batch plans and "
                              "completions are recorded (local path, gs:// or hdfs://)")
        if o["zdl_mode"] == "wal" and not o.get("wal_dir"):
            raise ConfigError("--wal_dir is required with --zdl_mode=wal: where WAL "
                              "segments are written (local path, gs:// or hdfs://)")
        servers = (o.get("bootstrap_servers") or "").strip()
        if not servers:
            raise ConfigError("--bootstrap_servers is empty: give host:port of a Kafka broker")
        return cls(
            bootstrap_servers=servers,
            topics=topics,
            consumer_group=o.get("consumer_group") or f"beam-zdl-{topics[0]}",
            consumer_config=consumer_config,
            checkpoint_dir=o.get("checkpoint_dir"),
            mode=o["zdl_mode"],
            wal_dir=o.get("wal_dir"),
            starting_offsets=str(o["starting_offsets"]).strip(),
            ending_offsets=str(o["ending_offsets"]).strip() if o.get("ending_offsets") else None,
            max_records_per_partition=o["max_records_per_partition"],
            max_records_per_batch=o["max_records_per_batch"],
            batch_interval_s=o["batch_interval_s"],
            trigger=o["trigger"],
            fail_on_data_loss=o["fail_on_data_loss"],
            record_batches=o.get("record_batches", _DEFAULTS["record_batches"]),
            max_batches=o["max_batches"],
            retain_batches=o["retain_batches"],
            wal_segment_bytes=o["wal_segment_bytes"],
            wal_segment_records=o["wal_segment_records"],
            wal_segment_age_s=o["wal_segment_age_s"],
            max_buffered_bytes=o["max_buffered_bytes"],
            drain_timeout_s=o["drain_timeout_s"],
            partition_discovery_interval_s=o["partition_discovery_interval_s"],
            idle_watermark_delay_s=o["idle_watermark_delay_s"],
            kafka_connect_timeout_s=o["kafka_connect_timeout_s"],
            metrics_port=port,
            health_timeout_s=o.get("health_timeout_s", _DEFAULTS["health_timeout_s"]),
            log_format=o.get("log_format") or "text",
        )

    def fingerprint(self) -> str:
        """A hash of the settings that change what a batch reads (for plans)."""
        relevant = {k: v for k, v in asdict(self).items()
                    if k in ("topics", "mode", "consumer_group", "wal_dir")}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


_DEFAULTS = {f.name: f.default for f in fields(ZdlConfig) if f.default is not MISSING}


def add_zdl_arguments(parser: argparse.ArgumentParser) -> None:
    """Define every beam_zdl flag on ``parser`` (not ``--bootstrap_servers``: Beam's)."""
    parser.add_argument(
        "--topics", default=None,
        help="Comma-separated Kafka topics to read. Required.")
    parser.add_argument(
        "--consumer_group", default=None,
        help="Kafka consumer group whose offsets beam_zdl commits after each "
             "durable batch (and reads with --starting_offsets=committed). "
             "Default: beam-zdl-<first topic>.")
    parser.add_argument(
        "--consumer_config", default="{}",
        help='Extra confluent-kafka settings as a JSON object, e.g. '
             '\'{"security.protocol": "SASL_SSL", '
             '"sasl.password": "${env:KAFKA_PASSWORD}"}\'. Give secrets as ${env:NAME} or ${file:PATH} references: runners keep '
             'pipeline options in job descriptions.')
    parser.add_argument(
        "--checkpoint_dir", default=None,
        help="Where batch plans and completions are recorded: a local path, "
             "gs://bucket/path or hdfs://namenode:http_port/path. Required for "
             "run_micro_batches.")
    parser.add_argument(
        "--zdl_mode", default=_DEFAULTS["mode"],
        help="direct: batches of Kafka offset ranges; wal: a reliable receiver "
             "writes a write-ahead log that batches read.")
    parser.add_argument(
        "--wal_dir", default=None,
        help="Where WAL segments live (local path, gs://, hdfs://). "
             "Required with --zdl_mode=wal.")
    parser.add_argument(
        "--starting_offsets", default=_DEFAULTS["starting_offsets"],
        help="Where a partition starts when the checkpoint has no position for "
             "it: earliest, latest, committed (the group's committed offset, "
             "else earliest), timestamp:<epoch ms> (the first record at or after it), "
             'or a JSON map {"topic": {"0": 1234, "1": -2}} (-2 earliest, -1 latest).')
    parser.add_argument(
        "--ending_offsets", default=_DEFAULTS["ending_offsets"],
        help="Direct mode: where reading stops, to reprocess a range: latest (the end "
             "offsets when the run starts), timestamp:<epoch ms>, or a JSON map "
             '{"topic": {"0": 5000, "1": -1}} (-1 latest). run_micro_batches stops '
             "there (any --trigger); a bounded ReadFromKafka reads up to there. "
             "Default: none (the end offsets).")
    parser.add_argument(
        "--max_records_per_partition", type=int,
        default=_DEFAULTS["max_records_per_partition"],
        help="Cap on records per partition in one batch; 0 means no cap.")
    parser.add_argument(
        "--max_records_per_batch", type=int, default=_DEFAULTS["max_records_per_batch"],
        help="Cap on records in one batch across partitions, shared in proportion to "
             "each partition's lag (Spark's maxOffsetsPerTrigger); 0 means no cap. WAL "
             "mode caps at segment granularity.")
    parser.add_argument(
        "--batch_interval_s", type=float, default=_DEFAULTS["batch_interval_s"],
        help="With --trigger=continuous: seconds between batch starts.")
    parser.add_argument(
        "--trigger", default=_DEFAULTS["trigger"],
        help="available_now: drain what exists at start, then exit; "
             "continuous: a batch every --batch_interval_s until stopped.")
    parser.add_argument(
        "--fail_on_data_loss", type=parse_bool, default=_DEFAULTS["fail_on_data_loss"],
        help="true: missing Kafka data or a corrupt WAL frame stops the run with "
             "an error naming where; false: skip it, count it in a metric and "
             "log a warning.")
    parser.add_argument(
        "--record_batches", type=parse_bool, nargs="?", const=True,
        default=_DEFAULTS["record_batches"],
        help="true: build_fn (and ReadFromKafka, ReadFromWal) gets record batches instead "
             "of records: each element a list of KafkaRecord, what one poll read from one "
             "partition (direct mode) or one WAL block (WAL mode), all of one "
             "topic-partition in offset order. Beam's cost per element (~5 us) is then paid per batch of up to "
             "a few thousand records: for throughput-bound pipelines whose transforms can "
             "work on a list. Every record is still in exactly one batch; plans, replays "
             "and commits are the same. Not with --streaming.")
    parser.add_argument(
        "--max_batches", type=int, default=_DEFAULTS["max_batches"],
        help="Stop after this many batches (replays included); 0 means no limit.")
    parser.add_argument(
        "--retain_batches", type=int, default=_DEFAULTS["retain_batches"],
        help="Completed batches whose metadata is kept for inspection (>= 1).")
    parser.add_argument(
        "--wal_segment_bytes", type=int, default=_DEFAULTS["wal_segment_bytes"],
        help="WAL mode: seal a segment at this many bytes.")
    parser.add_argument(
        "--wal_segment_records", type=int, default=_DEFAULTS["wal_segment_records"],
        help="WAL mode: seal a segment at this many records.")
    parser.add_argument(
        "--wal_segment_age_s", type=float, default=_DEFAULTS["wal_segment_age_s"],
        help="WAL mode: seal a non-empty segment at this age in seconds.")
    parser.add_argument(
        "--max_buffered_bytes", type=int, default=_DEFAULTS["max_buffered_bytes"],
        help="WAL mode: bytes the receiver may hold before it pauses its "
             "partitions (backpressure).")
    parser.add_argument(
        "--drain_timeout_s", type=float, default=_DEFAULTS["drain_timeout_s"],
        help="WAL mode, --trigger=available_now: how long to wait, without progress, "
             "for partitions that other members of --consumer_group hold (a killed "
             "member keeps them until its session times out, 45 s by default) before "
             "failing, naming them.")
    parser.add_argument(
        "--partition_discovery_interval_s", type=float,
        default=_DEFAULTS["partition_discovery_interval_s"],
        help="Streaming: seconds between checks for new partitions of --topics.")
    parser.add_argument(
        "--idle_watermark_delay_s", type=float,
        default=_DEFAULTS["idle_watermark_delay_s"],
        help="Streaming: a partition that is caught up holds the watermark at "
             "now minus this many seconds; records older than that arriving "
             "later are late data.")
    parser.add_argument(
        "--kafka_connect_timeout_s", type=float,
        default=_DEFAULTS["kafka_connect_timeout_s"],
        help="At start, how long to wait for a first answer from --bootstrap_servers "
             "before failing with the reason; 0 skips the check (a launcher outside the "
             "brokers' network). Once running, an outage is retried.")
    parser.add_argument(
        "--metrics_port", type=int, default=_DEFAULTS["metrics_port"],
        help="Serve Prometheus metrics at /metrics and a health check at /healthz on this "
             "port (run_micro_batches' driver, beam-zdl receive); 0 picks a free port. "
             "Default: none (no server). See docs/monitoring.md.")
    parser.add_argument(
        "--health_timeout_s", type=float, default=_DEFAULTS["health_timeout_s"],
        help="/healthz answers 503 once the driver's loop (a plan, a batch, an idle check) "
             "or the receiver's (a poll that reached the broker, a seal) has not turned for "
             "this many seconds; make it longer than your slowest batch.")
    parser.add_argument(
        "--log_format", default=_DEFAULTS["log_format"],
        help="text: plain log lines; json: one JSON object per line on stderr (with "
             "batch_id and partition fields where they apply), for log collectors.")


def flag_names() -> list[str]:
    """Every beam_zdl flag's name (without dashes), ``bootstrap_servers`` included."""
    parser = argparse.ArgumentParser(add_help=False)
    add_zdl_arguments(parser)
    return ["bootstrap_servers", *vars(parser.parse_known_args([])[0])]


def near_misses(names: Sequence[str]) -> dict[str, str]:
    """For each unknown flag name that is close to a beam_zdl flag, that flag's name."""
    import difflib
    ours = flag_names()
    out = {}
    for name in names:
        close = difflib.get_close_matches(name.lstrip("-"), ours, n=1, cutoff=0.75)
        if close and close[0] != name.lstrip("-"):
            out[name.lstrip("-")] = close[0]
    return out


_WARNED_SECRETS: set[tuple[str, ...]] = set()


def _warn_literal_secrets(consumer_config: dict[str, Any]) -> None:
    """Say once per process which secrets are given literally (never their values)."""
    keys = tuple(literal_secrets(consumer_config))
    if keys and keys not in _WARNED_SECRETS:
        _WARNED_SECRETS.add(keys)
        _LOGGER.warning("--consumer_config gives %s as literal values; runners keep pipeline "
                        "options in job descriptions, so give them as ${env:NAME} or "
                        "${file:PATH} references instead (beam_zdl never logs them)",
                        ", ".join(keys))


def _choice(o: dict[str, Any], name: str, allowed: tuple[str, ...]) -> None:
    if o.get(name) not in allowed:
        raise ConfigError(f"--{name} must be one of {', '.join(allowed)}; got {o.get(name)!r}")
