"""Safe by construction: no client setting, typo, Beam keyword or dead broker weakens a
guarantee quietly (issue "Safe by construction").

Each guarded client setting is refused or mapped, the same way through flags, keywords,
the stand-alone receiver and the sink; a reader that somehow got a resetting consumer
still reports a retention gap; a broker that is not there fails every entry point within
``--kafka_connect_timeout_s``, naming the servers and librdkafka's reason.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import GlobalWindow

import beam_zdl
import beam_zdl.kafka as kafka_
from beam_zdl.cli import main as cli_main
from beam_zdl.config import ZdlConfig
from beam_zdl.direct import RangeGroup, ReadOffsetRangesFn, ReadSettings
from beam_zdl.trackers import RangeGroupTracker
from beam_zdl.errors import ConfigError, DataLossError, KafkaUnavailableError
from beam_zdl.options import ZdlOptions, warn_near_misses
from beam_zdl.ranges import PartitionRange

ROOT = Path(__file__).resolve().parent.parent

# (key, value a tutorial might set, what the error must point to instead)
REFUSED = [
    ("auto.offset.reset", "latest", "--starting_offsets"),
    ("auto.offset.reset", "smallest-ever", "--starting_offsets"),
    ("isolation.level", "read_uncommitted", "committed records only"),
    ("enable.auto.commit", True, "commits --consumer_group's offsets itself"),
    ("enable.auto.offset.store", True, "commits --consumer_group's offsets itself"),
    ("enable.partition.eof", True, "--ending_offsets"),
]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the rule, through every path ----------------------------------------------------------

@pytest.mark.parametrize("key, value, instead", REFUSED)
def test_guarded_consumer_setting_is_refused_in_flags_keywords_and_cli(key, value, instead,
                                                                       capsys):
    config = json.dumps({key: value})
    with pytest.raises(ConfigError, match=f"--consumer_config may not set '{key}'.*{instead}"):
        ZdlConfig.from_options(ZdlOptions(["--topics=t", f"--consumer_config={config}"]))
    with pytest.raises(ConfigError,
                       match=rf"ReadFromKafka\(consumer_config=\.\.\.\) may not set '{key}'"):
        beam_zdl.ReadFromKafka(topics="t", consumer_config={key: value})
    # Any path that builds a client itself (the streaming read, a worker) meets the rule too.
    with pytest.raises(ConfigError, match=f"may not set '{key}'"):
        kafka_.consumer_settings("b:1", "g", {key: value})
    code = cli_main(["receive", "--topics=t", "--wal_dir=/tmp/w", f"--consumer_config={config}"])
    assert code == 2 and f"may not set '{key}'" in capsys.readouterr().err


def test_guarded_setting_is_refused_by_the_streaming_read_at_build():
    options = ZdlOptions(["--streaming", "--topics=t",
                          '--consumer_config={"isolation.level": "read_uncommitted"}'])
    p = beam.Pipeline(options=options)
    with pytest.raises(ConfigError, match="may not set 'isolation.level'"):
        _ = p | beam_zdl.ReadFromKafka()


@pytest.mark.parametrize("mode", ["direct", "wal"])
def test_micro_batches_refuse_a_resetting_consumer_before_anything_runs(mode, tmp_path):
    options = ZdlOptions(["--topics=t", f"--checkpoint_dir={tmp_path / 'ckpt'}",
                          f"--zdl_mode={mode}", f"--wal_dir={tmp_path / 'wal'}",
                          '--consumer_config={"auto.offset.reset": "latest"}'])
    with pytest.raises(ConfigError, match="may not set 'auto.offset.reset'"):
        beam_zdl.run_micro_batches(lambda records, batch: None, options)
    assert not (tmp_path / "ckpt").exists()


def test_own_values_are_accepted_and_kafka_style_keys_are_mapped_to_flags(caplog):
    caplog.set_level(logging.INFO, logger="beam_zdl.config")
    group = f"app-{uuid.uuid4().hex[:8]}"  # the INFO line is said once per process
    config = ZdlConfig.from_options(ZdlOptions(["--topics=t", "--consumer_config=" + json.dumps(
        {"auto.offset.reset": "earliest", "group.id": group, "bootstrap.servers": "k:1",
         "isolation.level": "read_committed", "enable.auto.commit": False,
         "session.timeout.ms": 6000})]))
    assert (config.starting_offsets, config.consumer_group, config.bootstrap_servers) == (
        "committed", group, "k:1")
    assert config.consumer_config == {"session.timeout.ms": 6000}
    assert f"group.id='{group}' taken as --consumer_group={group}" in caplog.text
    with pytest.raises(ConfigError, match="disagree"):
        ZdlConfig.from_options(ZdlOptions(["--topics=t", "--starting_offsets=latest",
                                           '--consumer_config={"auto.offset.reset": "earliest"}']))


@pytest.mark.parametrize("config, key", [
    ({"acks": 1}, "acks"), ({"acks": "0"}, "acks"),
    ({"enable.idempotence": False}, "enable.idempotence"),
    ({"transactional.id": "mine"}, "transactional.id"),
])
def test_guarded_producer_setting_is_refused(config, key):
    with pytest.raises(ConfigError, match=rf"WriteToKafka\(producer_config=\.\.\.\) may not set "
                                          f"'{key}'"):
        beam_zdl.WriteToKafka("out", "b:1", producer_config=config)
    beam_zdl.WriteToKafka("out", "b:1", producer_config={"acks": "all", "linger.ms": 20})


def test_secrets_stay_out_of_guard_errors_and_display_data():
    read = beam_zdl.ReadFromKafka(topics="t", consumer_config={"sasl.password": "hunter2"})
    shown = json.dumps(read.display_data())
    assert "hunter2" not in shown and "<redacted>" in shown and '"topics": "t"' in shown
    write = beam_zdl.WriteToKafka({"bootstrap.servers": "b:1", "sasl.password": "hunter2"},
                                  "out")
    assert "hunter2" not in json.dumps(write.display_data())


# --- belt and braces: a reset that slipped through is still data loss -----------------------

def test_reader_with_a_resetting_consumer_still_reports_the_retention_gap(kafka, monkeypatch):
    topic = kafka.create_topic(partitions=1)
    kafka.produce(topic, ((None, f"v{i}".encode()) for i in range(100)))
    admin = kafka.admin()  # must outlive the futures
    for future in admin.delete_records([_tp(topic, 0, 40)]).values():
        future.result(timeout=30)
    # As if a path around the rule had built the reader's consumer with a reset policy.
    monkeypatch.setattr(kafka_, "check_consumer_config", lambda config, source="": dict(config))
    settings = ReadSettings(kafka.bootstrap_servers, f"g-{topic}",
                            consumer_config={"auto.offset.reset": "earliest"})
    fn = ReadOffsetRangesFn(settings)
    fn.setup()
    try:
        tracker = RangeGroupTracker((OffsetRange(10, 100),))
        with pytest.raises(DataLossError, match=rf"{topic}\[0\] offsets \[10, 40\)"):
            list(fn.process(RangeGroup((PartitionRange(topic, 0, 10, 100),)), window=GlobalWindow(),
                            tracker=tracker))
    finally:
        fn.teardown()


def test_gap_above_the_log_start_is_not_data_loss(kafka):
    topic = kafka.create_topic(partitions=1)
    committed = kafka.produce_transactions(topic, [(True, [(None, b"a", 0)] * 5),
                                                   (False, [(None, b"x", 0)] * 5),
                                                   (True, [(None, b"b", 0)] * 5)])
    fn = ReadOffsetRangesFn(ReadSettings(kafka.bootstrap_servers, f"g-{topic}"))
    fn.setup()
    try:
        end = kafka.end_offsets(topic)[0]
        polls = list(fn.process(RangeGroup((PartitionRange(topic, 0, 0, end),)), window=GlobalWindow(),
                                tracker=RangeGroupTracker((OffsetRange(0, end),))))
    finally:
        fn.teardown()
    offsets = [wv.value.offset for poll in polls for wv in poll]
    # Markers and the aborted transaction are skipped, with no data loss reported.
    assert offsets == sorted(o for _, _, o in committed) and len(offsets) == 10


def _tp(topic: str, partition: int, offset: int):
    from confluent_kafka import TopicPartition
    return TopicPartition(topic, partition, offset)


# --- a dead broker fails every entry point, fast and by name ---------------------------------

TIMEOUT = 1
BOUND_S = 45  # the check's timeout plus process and Beam start-up on a loaded machine


# make test keeps one dead address (a closed port); a name that does not resolve is the same
# path with another reason, in make test-all.
@pytest.fixture(params=["closed_port", pytest.param("unresolvable", marks=pytest.mark.slow)])
def dead_servers(request) -> tuple[str, str]:
    if request.param == "closed_port":
        return f"127.0.0.1:{_closed_port()}", "Connection refused"
    return "no-such-broker.invalid:9092", "Failed to resolve"


def _entry_points(tmp_path: Path, servers: str):
    flags = [f"--bootstrap_servers={servers}", "--topics=t",
             f"--kafka_connect_timeout_s={TIMEOUT}"]
    yield "direct", lambda: beam_zdl.run_micro_batches(lambda r, b: None, ZdlOptions(
        [*flags, f"--checkpoint_dir={tmp_path / 'c1'}"]))
    yield "wal", lambda: beam_zdl.run_micro_batches(lambda r, b: None, ZdlOptions(
        [*flags, f"--checkpoint_dir={tmp_path / 'c2'}", "--zdl_mode=wal",
         f"--wal_dir={tmp_path / 'wal'}"]))

    def bounded():
        with beam.Pipeline(options=ZdlOptions(flags)) as p:
            _ = p | beam_zdl.ReadFromKafka()
    yield "bounded read", bounded

    def streaming():
        p = beam.Pipeline(options=ZdlOptions([*flags, "--streaming"]))
        _ = p | beam_zdl.ReadFromKafka()
    yield "streaming read", streaming

    def sink():
        p = beam.Pipeline()
        _ = p | beam.Create([b"x"]) | beam_zdl.WriteToKafka(
            "t", servers, exactly_once=False, connect_timeout_s=TIMEOUT)
    yield "sink", sink


@pytest.mark.integration  # every entry point, waiting on a dead address
def test_every_entry_point_fails_fast_naming_servers_and_reason(tmp_path, dead_servers):
    servers, reason = dead_servers
    for name, entry in _entry_points(tmp_path, servers):
        started = time.monotonic()
        with pytest.raises(KafkaUnavailableError) as info:
            entry()
        took = time.monotonic() - started
        assert took < BOUND_S, f"{name} took {took:.0f} s"
        assert servers in str(info.value) and reason in str(info.value), (name, info.value)
        assert "kafka_connect_timeout_s=0" in str(info.value) or "connect_timeout_s" in str(
            info.value)


@pytest.mark.integration  # every entry point, waiting on a dead address
def test_cli_entry_points_fail_fast_without_raw_librdkafka_lines(tmp_path, dead_servers):
    servers, reason = dead_servers
    commands = [
        ["receive", f"--bootstrap_servers={servers}", "--topics=t",
         f"--wal_dir={tmp_path / 'wal'}", f"--kafka_connect_timeout_s={TIMEOUT}"],
    ]
    for command in commands:
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "beam_zdl.cli", *command],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert time.monotonic() - started < BOUND_S
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert servers in proc.stderr and reason in proc.stderr
        raw = [line for line in proc.stderr.splitlines() if line.startswith("%")]
        assert raw == [], raw[:3]


def test_inspect_with_a_dead_broker_fails_fast(tmp_path, kafka, capsys):
    from beam_zdl.coordinator import CheckpointCoordinator
    from beam_zdl.v1 import checkpoint_pb2
    ckpt = str(tmp_path / "ckpt")
    CheckpointCoordinator(ckpt).open(checkpoint_pb2.CheckpointConfig(
        format_version=2, topics=["t"], mode=checkpoint_pb2.MODE_DIRECT, consumer_group="g"))
    servers = f"127.0.0.1:{_closed_port()}"
    code = cli_main(["inspect", ckpt, f"--bootstrap_servers={servers}",
                     f"--kafka_connect_timeout_s={TIMEOUT}"])
    err = capsys.readouterr().err
    assert code == 2 and servers in err and "Connection refused" in err


def test_default_servers_are_named_as_the_default():
    error = kafka_.unreachable_error(kafka_.DEFAULT_BOOTSTRAP_SERVERS, 3, [
        "localhost:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused "
        "(after 0ms in state CONNECT)", "1/1 brokers are down"])
    assert "(the default of --bootstrap_servers" in str(error)
    assert "Connection refused" in str(error) and "after 0ms" not in str(error)


def test_librdkafka_lines_go_through_python_logging_rate_limited(caplog):
    from confluent_kafka import Consumer, KafkaException
    caplog.set_level(logging.DEBUG, logger="beam_zdl.kafka.librdkafka")
    servers = f"127.0.0.1:{_closed_port()}"
    consumer = Consumer(kafka_.consumer_settings(servers, "g"))
    try:
        with pytest.raises(KafkaException):
            consumer.list_topics(timeout=3)
        consumer.poll(0.1)
    finally:
        consumer.close()
    lines = [r for r in caplog.records if r.name == "beam_zdl.kafka.librdkafka"]
    refused = [r for r in lines if "Connection refused" in r.getMessage()]
    assert 1 <= len(refused) <= 2, [r.getMessage() for r in lines][:5]


# --- typos ------------------------------------------------------------------------------------

def test_cli_rejects_unknown_flags_with_did_you_mean(capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["receive", "--topics=t", "--bogus=1", "--checkpoint_dri=/x"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert "--bogus=1" in err and "--checkpoint_dri=/x (did you mean --checkpoint_dir?)" in err


def test_cli_help_lists_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit):
        cli_main(["receive", "--help"])
    out = capsys.readouterr().out
    for flag in ("--wal_dir", "--max_buffered_bytes", "--kafka_connect_timeout_s",
                 "--bootstrap_servers", "--drain_to_end"):
        assert flag in out
    assert "(default: 67108864)" in out and "(default: localhost:9092)" in out
    # A default said once: not for a flag whose help says it, nor "None" for one not given.
    said = " ".join(out.split())
    assert "(default: None)" not in said
    assert not re.search(r"Default: [^.()]*(\([^)]*\))?\. \(default:", said)


def test_driver_warns_of_a_near_miss_flag(caplog):
    options = ZdlOptions(["--topics=t", "--checkpoint_dri=/x", "--output=o"])
    with caplog.at_level(logging.WARNING, logger="beam_zdl.options"):
        found = warn_near_misses(options)
    assert found == {"checkpoint_dri": "checkpoint_dir"}
    assert "did you mean --checkpoint_dir?" in caplog.text


# --- Beam's keyword names ---------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(key_deserializer="io.confluent.kafka.serializers.KafkaAvroDeserializer"),
     "DecodeRecords"),
    (dict(timestamp_policy="ProcessingTime"), "TimestampedValue"),
    (dict(max_num_records=10), "max_records_per_partition"),
    (dict(max_read_time=10), "stop_read_time"),
    (dict(expansion_service="localhost:8097"), "no expansion service"),
    (dict(consumer_factory_fn_class="x.Y"), "consumer_config"),
    (dict(with_metdata=True), "did you mean with_metadata=?"),
])
def test_beam_keyword_refused_with_what_beam_zdl_does(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        beam_zdl.ReadFromKafka(topics="t", **kwargs)


def test_beam_keywords_accepted_with_beams_meaning(kafka, tmp_path):
    topic = kafka.create_topic(partitions=1)
    kafka.produce(topic, ((f"k{i}".encode(), f"v{i}".encode()) for i in range(5)))
    beam_zdl.ReadFromKafka(topics="t", timestamp_policy="CreateTime", allow_duplicates=True,
                           key_deserializer="org.apache.kafka.common.serialization."
                                            "ByteArrayDeserializer")
    with pytest.raises(ConfigError, match="a bounded read never commits"):
        with beam.Pipeline(options=ZdlOptions([])) as p:
            _ = p | beam_zdl.ReadFromKafka(
                consumer_config={"bootstrap.servers": kafka.bootstrap_servers},
                topics=[topic], commit_offset_in_finalize=True)
    out = tmp_path / "pairs"
    with beam.Pipeline(options=ZdlOptions([])) as p:
        _ = (p | beam_zdl.ReadFromKafka(
                consumer_config={"bootstrap.servers": kafka.bootstrap_servers,
                                 "group.id": f"g-{topic}", "auto.offset.reset": "earliest"},
                topics=[topic], with_metadata=False, redistribute=True,
                stop_read_time=int(time.time() * 1000) + 60_000)
             | beam.Map(lambda kv: json.dumps([kv[0].decode(), kv[1].decode()]))
             | beam.io.WriteToText(str(out)))
    got = sorted(json.loads(line) for f in tmp_path.glob("pairs*") for line in f.open())
    assert got == [[f"k{i}", f"v{i}"] for i in range(5)]


def test_write_to_kafka_takes_beams_shape(kafka):
    topic = kafka.create_topic(partitions=1)
    with beam.Pipeline() as p:
        _ = (p | beam.Create([(b"k", b"v1"), (b"k", b"v2")])
             | beam_zdl.WriteToKafka({"bootstrap.servers": kafka.bootstrap_servers}, topic,
                                     key_serializer="org.apache.kafka.common.serialization."
                                                    "ByteArraySerializer"))
    assert kafka.end_offsets(topic)[0] == 2
    with pytest.raises(ConfigError, match="key_fn"):
        beam_zdl.WriteToKafka({"bootstrap.servers": "b:1"}, topic,
                              value_serializer="org.apache.kafka.common.serialization."
                                               "StringSerializer")
    with pytest.raises(ConfigError, match="needs the brokers"):
        beam_zdl.WriteToKafka(topic=topic, producer_config={})


# --- flag names -------------------------------------------------------------------------------

def test_zdl_options_coexist_with_beams_and_a_users_common_flag_names():
    class UserOptions(PipelineOptions):
        @classmethod
        def _add_argparse_args(cls, parser):
            parser.add_argument("--output", default=None)
            parser.add_argument("--input", default=None)
            parser.add_argument("--topic", default=None)

    options = PipelineOptions(["--topic=mine", "--topics=ours", "--output=o", "--input=i",
                               "--runner=DirectRunner", "--streaming"])
    assert options.view_as(UserOptions).topic == "mine"
    assert options.view_as(UserOptions).output == "o"
    assert ZdlConfig.from_options(options).topics == ("ours",)
    everything = options.get_all_options()
    assert everything["runner"] == "DirectRunner" and everything["streaming"] is True


# --- the issue's own reproduction: a retention gap with Kafka's earliest ------------------------

@pytest.mark.parametrize("mode", ["direct", "wal"])
def test_retention_gap_with_kafkas_earliest_stops_the_run(kafka, tmp_path, mode):
    """auto.offset.reset=earliest (mapped to --starting_offsets=committed) over a group
    committed at 0 whose offsets 0-39 retention deleted: DataLossError, never an exit
    with the gap skipped."""
    from confluent_kafka import Consumer
    topic = kafka.create_topic(partitions=1)
    kafka.produce(topic, ((None, f"v{i}".encode()) for i in range(100)))
    group = f"g-{topic}"
    committer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group,
                          "enable.auto.commit": False})
    committer.commit(offsets=[_tp(topic, 0, 0)], asynchronous=False)
    committer.close()
    admin = kafka.admin()  # must outlive the futures
    for future in admin.delete_records([_tp(topic, 0, 40)]).values():
        future.result(timeout=30)
    seen: list[int] = []

    def build(records, batch):
        _ = records | beam.Map(lambda r: seen.append(r.offset))

    options = ZdlOptions([f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
                          f"--consumer_group={group}", f"--checkpoint_dir={tmp_path / 'c'}",
                          f"--zdl_mode={mode}", f"--wal_dir={tmp_path / 'w'}",
                          '--consumer_config={"auto.offset.reset": "earliest", '
                          '"session.timeout.ms": 6000}'])
    with pytest.raises(DataLossError, match=rf"{topic}\[0\] offsets \[0, 40\)"):
        beam_zdl.run_micro_batches(build, options)
    assert kafka.committed(group, topic)[0] == 0  # nothing acknowledged past the gap
