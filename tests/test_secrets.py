"""Client secrets never appear in logs, errors, display data, checkpoints or job
descriptions (the pipeline proto and options a runner receives)."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import apache_beam as beam
import pytest

import beam_zdl
from beam_zdl.errors import ConfigError
from beam_zdl.options import ZdlConfig, ZdlOptions
from beam_zdl.secrets import REDACTED, redact, resolve

SECRET = f"s3cr3t-{uuid.uuid4().hex}"
LITERAL = f"l1t3ral-{uuid.uuid4().hex}"


def test_redact_hides_every_secret_setting_and_keeps_references():
    settings = {"sasl.password": "a", "ssl.key.password": "b", "ssl.keystore.password": "c",
                "sasl.oauthbearer.client.secret": "d", "sasl.oauthbearer.config": "e",
                "ssl.key.pem": "f", "sasl.jaas.config": "g", "security.protocol": "SASL_SSL",
                "sasl.username": "user", "ssl.key.location": "/etc/key",
                "session.timeout.ms": 6000, "ssl.ca.location": "/etc/ca"}
    shown = redact({**settings, "sasl.password": "${env:KAFKA_PASSWORD}"})
    hidden = {k for k, v in shown.items() if v == REDACTED}
    assert hidden == {"ssl.key.password", "ssl.keystore.password", "ssl.key.pem",
                      "sasl.oauthbearer.client.secret", "sasl.oauthbearer.config",
                      "sasl.jaas.config"}
    assert shown["sasl.password"] == "${env:KAFKA_PASSWORD}"
    assert shown["sasl.username"] == "user" and shown["session.timeout.ms"] == 6000


def test_resolve_reads_env_and_file_and_names_only_the_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("BEAM_ZDL_TEST_SECRET", SECRET)
    (tmp_path / "pw").write_text(LITERAL + "\n")
    assert resolve({"sasl.password": "${env:BEAM_ZDL_TEST_SECRET}",
                    "ssl.key.password": f"${{file:{tmp_path / 'pw'}}}", "x": 1}) == {
        "sasl.password": SECRET, "ssl.key.password": LITERAL, "x": 1}
    with pytest.raises(ConfigError, match="'sasl.password' refers to environment variable "
                                          "'BEAM_ZDL_NOT_SET'"):
        resolve({"sasl.password": "${env:BEAM_ZDL_NOT_SET}"})
    with pytest.raises(ConfigError, match="refers to file '/nonexistent/pw'"):
        resolve({"sasl.password": "${file:/nonexistent/pw}"})


def test_bad_consumer_config_error_does_not_echo_the_value():
    with pytest.raises(ConfigError) as raised:
        ZdlConfig.from_options(ZdlOptions(
            ["--topics=t", '--consumer_config={"sasl.password": "%s",}' % LITERAL]))
    assert "--consumer_config is not valid JSON" in str(raised.value)
    assert LITERAL not in str(raised.value)
    config = ZdlConfig.from_options(ZdlOptions(
        ["--topics=t", '--consumer_config={"sasl.password": "%s"}' % LITERAL]))
    assert LITERAL not in repr(config)


def _all_bytes_under(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


@pytest.mark.parametrize("mode", ["direct", pytest.param("wal", marks=pytest.mark.slow)])
def test_secrets_stay_out_of_logs_display_data_checkpoints_and_job_descriptions(
        kafka, tmp_path, monkeypatch, caplog, capfd, mode):
    """A real run with one secret given as an ${env:...} reference and one literally."""
    monkeypatch.setenv("BEAM_ZDL_TEST_SECRET", SECRET)
    monkeypatch.setattr("beam_zdl.config._WARNED_SECRETS", set())  # warned once per process
    topic = kafka.create_topic(partitions=2)
    kafka.produce(topic, ((None, f"v{i}".encode(), i % 2) for i in range(200)))
    consumer_config = {"sasl.password": "${env:BEAM_ZDL_TEST_SECRET}",
                       "ssl.key.password": LITERAL, "session.timeout.ms": 6000}
    flags = [f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
             f"--checkpoint_dir={tmp_path / 'ckpt'}", f"--consumer_group=g-{topic}",
             "--starting_offsets=earliest", f"--zdl_mode={mode}",
             f"--wal_dir={tmp_path / 'wal'}", "--consumer_config=" + json.dumps(consumer_config)]
    caplog.set_level(logging.DEBUG)
    protos: list[bytes] = []

    def build(records, batch):
        # What a runner receives as the job: the pipeline proto, display data included.
        protos.append(records.pipeline.to_runner_api().SerializeToString())
        _ = records | beam.Map(lambda r: r.offset)

    summary = beam_zdl.run_micro_batches(build, ZdlOptions(flags))

    assert summary.records == 200, "the secrets were not resolved for the clients"
    out, err = capfd.readouterr()
    logs = "\n".join(r.getMessage() for r in caplog.records) + out + err
    for secret in (SECRET, LITERAL):
        assert secret not in logs
        assert secret.encode() not in _all_bytes_under(tmp_path / "ckpt")
    assert "ssl.key.password as literal values" in logs  # the warning names the key only
    # Job description: the reference travels, never its value. (A literal secret travels
    # in the options as given: that is what the warning is about.)
    assert protos and all(SECRET.encode() not in proto for proto in protos)
    assert SECRET not in json.dumps(ZdlOptions(flags).get_all_options())


def test_display_data_redacts_literal_secrets(kafka):
    topic = kafka.create_topic(partitions=1)
    options = ZdlOptions([f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
                          '--consumer_config={"ssl.key.password": "%s"}' % LITERAL])
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | beam_zdl.ReadFromKafka(options)
    proto = pipeline.to_runner_api()
    from apache_beam.portability.api import beam_runner_api_pb2
    shown = []
    for transform in proto.components.transforms.values():
        for item in transform.display_data:
            payload = beam_runner_api_pb2.LabelledPayload.FromString(item.payload)
            shown.append((payload.key, payload.string_value or payload.bool_value))
    assert shown, "no display data"
    text = repr(shown)
    assert "consumer_group" in text and topic in text and REDACTED in text
    # the pickled DoFn still holds the literal (it must reach the workers): only
    # references keep it out of the job, as the warning says
    assert LITERAL not in text
