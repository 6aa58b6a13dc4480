"""One benchmark peer per call, in its own process, printing one JSON line.

    python -m bench.peers <peer> --bootstrap_servers=... --topics=... [--workdir=...]

The parent (bench/run.py) runs each peer as a child so that peak RSS is the
peer's own and a crash of one peer does not end the run. A peer that cannot
run prints ``{"error": "<why>"}`` and exits 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

PEERS: dict[str, Callable[[argparse.Namespace], dict]] = {}
# Peers that run a Flink cluster or embedded Flink (JVMs among their descendants).
_CLUSTER_PEERS = {"flink_batches", "flink_cluster_streaming", "flink_local_streaming"}
_ROOT = Path(__file__).resolve().parents[1]


def peer(name: str):
    def register(fn):
        PEERS[name] = fn
        return fn
    return register


@peer("bare_consumer")
def bare_consumer(args: argparse.Namespace, extra: dict | None = None) -> dict:
    """A plain confluent-kafka consume loop, librdkafka's fetch defaults: what a user's
    first loop reads. With few partitions it waits on fetch.queue.backoff.ms (1 s once a
    partition's queue is over 100k records); ``bare_consumer_tuned`` does not."""
    from beam_zdl import kafka
    consumer = kafka.new_consumer(args.bootstrap_servers, "bench-bare", extra)
    parts = kafka.partitions_of(consumer, [args.topics], args.bootstrap_servers)
    marks = kafka.watermarks(consumer, parts, args.bootstrap_servers)
    from confluent_kafka import TopicPartition
    consumer.assign([TopicPartition(t, p, low) for (t, p), (low, _) in marks.items()])
    remaining = sum(high - low for low, high in marks.values())
    records = nbytes = 0
    started = time.monotonic()
    while remaining > 0:
        for msg in consumer.consume(10_000, 1.0):
            if msg.error() is None:
                value = msg.value()
                nbytes += len(value) if value else 0
                records += 1
                remaining -= 1
    seconds = time.monotonic() - started
    consumer.close()
    return {"records": records, "bytes": nbytes, "seconds": seconds}


@peer("bare_consumer_tuned")
def bare_consumer_tuned(args: argparse.Namespace) -> dict:
    """The bare loop with direct mode's reader settings (kafka.BOUNDED_READER_CONFIG): no
    fetch backoff, so its rate does not depend on the partition count."""
    from beam_zdl import kafka
    return bare_consumer(args, dict(kafka.BOUNDED_READER_CONFIG))


def _build(records, batch) -> None:
    """The batch pipeline of every micro-batch peer: touch every value, sum the bytes."""
    import apache_beam as beam
    (records | beam.Map(lambda r: len(r.value or b"")) | beam.CombineGlobally(sum))


_WORKERS = {1: ["--direct_num_workers=1"],
            2: ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]}
# What one more worker costs (memory): not part of batch_overhead / batch_fixed_cost.
_THREE_WORKERS = ["--direct_num_workers=3", "--direct_running_mode=multi_processing"]


def _zdl_flags(args: argparse.Namespace, checkpoint_dir: str, *extra: str) -> list[str]:
    return [f"--bootstrap_servers={args.bootstrap_servers}", f"--topics={args.topics}",
            f"--checkpoint_dir={checkpoint_dir}", f"--consumer_group=bench-{uuid.uuid4().hex}",
            "--starting_offsets=earliest", "--trigger=available_now", *extra]


def _micro_batches(args: argparse.Namespace, extra: list[str],
                   checkpoint_dir: str | None = None, build: Callable = _build) -> dict:
    import apache_beam  # noqa: F401 - what a driver imports, before its RSS is read

    import beam_zdl
    imports_rss = _rss_mb(os.getpid())
    options = beam_zdl.ZdlOptions(_zdl_flags(
        args, checkpoint_dir or f"{args.workdir}/ckpt-{uuid.uuid4().hex}", *extra))
    started = time.monotonic()
    summary = beam_zdl.run_micro_batches(build, options)
    seconds = time.monotonic() - started
    return {"records": summary.records, "bytes": summary.records * args.value_bytes,
            "seconds": seconds, "batches": summary.batches,
            "driver_imports_rss_mb": round(imports_rss, 1)}


@peer("direct_1_worker")
def direct_1(args: argparse.Namespace) -> dict:
    return _micro_batches(args, _WORKERS[1])


@peer("direct_2_workers")
def direct_2(args: argparse.Namespace) -> dict:
    return _micro_batches(args, _WORKERS[2])


def _build_batches(batches, batch) -> None:
    """_build's work per record, on record batches (``--record_batches``)."""
    import apache_beam as beam
    (batches | beam.Map(lambda records: sum(len(r.value or b"") for r in records))
     | beam.CombineGlobally(sum))


@peer("direct_2_workers_batches")
def direct_2_batches(args: argparse.Namespace) -> dict:
    """direct_2_workers with ``--record_batches``: one element per poll, not per record."""
    return _micro_batches(args, [*_WORKERS[2], "--record_batches"], build=_build_batches)


@peer("direct_2_workers_lean")
def direct_2_lean(args: argparse.Namespace) -> dict:
    """direct_2_workers with BEAM_ZDL_LEAN_IMPORTS=1 (beam_zdl/lean.py), set before this
    process imports Beam, so the driver and its worker process are both lean."""
    _lean()
    return _micro_batches(args, _WORKERS[2])


def _lean() -> None:
    """BEAM_ZDL_LEAN_IMPORTS=1 before this process imports Beam, so the driver and its
    worker processes are both lean."""
    os.environ["BEAM_ZDL_LEAN_IMPORTS"] = "1"
    from beam_zdl import lean
    lean.install()


@peer("direct_1_worker_lean")
def direct_1_lean(args: argparse.Namespace) -> dict:
    _lean()
    return _micro_batches(args, _WORKERS[1])


@peer("direct_3_workers")
def direct_3(args: argparse.Namespace) -> dict:
    """The driver and 2 worker processes: against direct_2_workers, one more worker's cost."""
    return _micro_batches(args, _THREE_WORKERS)


@peer("direct_3_workers_lean")
def direct_3_lean(args: argparse.Namespace) -> dict:
    _lean()
    return _micro_batches(args, _THREE_WORKERS)


@peer("batch_overhead")
def batch_overhead(args: argparse.Namespace) -> dict:
    """The driver's fixed cost per batch: one batch of a tiny topic (``--topics``), per
    worker setting: pipeline construction, runner and worker start-up, plan, complete,
    commit. Its seconds are almost all fixed cost."""
    out = {}
    for workers, flags in _WORKERS.items():
        r = _micro_batches(args, flags)
        out[f"{workers}_worker_s"] = round(r["seconds"], 3)
        out[f"{workers}_worker_records"] = r["records"]
    return out


@peer("batch_fixed_cost_metrics")
def batch_fixed_cost_metrics(args: argparse.Namespace) -> dict:
    """``batch_fixed_cost`` with ``--metrics_port=0`` (Prometheus metrics and /healthz
    served, never scraped): against ``batch_fixed_cost``, the metrics' cost per batch."""
    return batch_fixed_cost(args, ["--metrics_port=0"])


@peer("batch_fixed_cost")
def batch_fixed_cost(args: argparse.Namespace, extra_flags: list[str] | None = None) -> dict:
    """Fixed cost per batch, per worker setting, on the small topic (``--topics``): after a
    warm-up run, the same records read in 1 batch and in 10 batches (25 records per
    partition each); the extra
    wall and CPU time (driver and its worker processes) per extra batch is the fixed cost.
    Also each batch's cycle in the 10-batch run (time between the starts of consecutive
    batch pipelines): the first one's start-up shows against the later ones."""
    ready: list[float] = []  # when warm workers said they were ready (their start-up)

    class _Ready(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "ready after" in record.getMessage():
                ready.append(time.monotonic())

    pool_log = logging.getLogger("beam_zdl.worker_pool")
    pool_log.addHandler(_Ready())
    pool_log.setLevel(logging.INFO)
    out = {}
    for workers, flags in _WORKERS.items():
        runs = {}
        # A first run in a process pays one-time costs (Beam's runner imports, first
        # pipeline translation) that would be counted against the 1-batch run.
        flags = [*flags, *(extra_flags or [])]
        _micro_batches(args, [*flags, "--max_records_per_partition=250"])
        for per_partition in (250, 25):
            starts: list[float] = []
            ready.clear()

            def build(records, batch) -> None:
                starts.append(time.monotonic())
                _build(records, batch)

            cpu = _tree_cpu_s()
            began = time.monotonic()
            r = _micro_batches(args, [*flags, f"--max_records_per_partition={per_partition}"],
                               build=build)
            r["cpu_s"] = _tree_cpu_s() - cpu
            r["starts"] = [t - began for t in starts]
            r["ready"] = max(ready) - began if ready else 0.0
            runs[per_partition] = r
        one, many = runs[250], runs[25]
        extra = max(1, many["batches"] - one["batches"])
        cycles = [b - a for a, b in zip(many["starts"], many["starts"][1:] + [many["seconds"]])]
        later = sorted(cycles[1:])
        out[f"{workers}_worker"] = {
            "batches": many["batches"], "records": many["records"],
            "fixed_s_per_batch": round((many["seconds"] - one["seconds"]) / extra, 3),
            "fixed_cpu_s_per_batch": round((many["cpu_s"] - one["cpu_s"]) / extra, 3),
            "startup_s": round(many["starts"][0], 3) if cycles else None,
            "first_batch_s": round(cycles[0], 3) if cycles else None,
            # The first batch's cycle from the moment its workers were ready (in process: 0).
            "first_batch_after_workers_ready_s": round(
                many["starts"][1] - max(many["ready"], many["starts"][0]), 3)
            if len(many["starts"]) > 1 else None,
            "workers_ready_s": round(many["ready"], 3),
            "median_later_batch_s": round(later[len(later) // 2], 3) if later else None,
            "one_batch_run_s": round(one["seconds"], 3)}
    return out


def _tree_cpu_s() -> float:
    """CPU seconds of this process and its reaped children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _wal(args: argparse.Namespace, root: str) -> dict:
    result = _micro_batches(args, [*_WORKERS[2], "--zdl_mode=wal", f"--wal_dir={root}/wal"],
                            checkpoint_dir=f"{root}/ckpt")
    result["workers"] = 2
    return result


@peer("wal_local")
def wal_local(args: argparse.Namespace) -> dict:
    """WAL mode end to end on local disk: the receiver (a child process of the driver) →
    sealed segments → batches (read by the driver and the worker processes)."""
    return _wal(args, f"{args.workdir}/wal-{uuid.uuid4().hex}")


@peer("wal_gcs")
def wal_gcs(args: argparse.Namespace) -> dict:
    """WAL mode with WAL and checkpoint on the GCS emulator ($STORAGE_EMULATOR_HOST)."""
    if not os.environ.get("STORAGE_EMULATOR_HOST") or not args.gcs_bucket:
        return {"error": "no GCS emulator (STORAGE_EMULATOR_HOST / --gcs_bucket unset)"}
    return _wal(args, f"gs://{args.gcs_bucket}/{uuid.uuid4().hex}")


# External peers run in their own venvs under .cache/peers/ (each pins its own
# confluent-kafka or apache-beam), made on first use and reused after.
QUIXSTREAMS = "quixstreams==3.28.1"


def _peer_python(name: str, requirement: str) -> tuple[Path | None, str]:
    """The python of venv ``.cache/peers/<name>`` with ``requirement`` installed, or why not."""
    from beam_zdl.testing.jars import cache_dir
    venv = cache_dir() / "peers" / name
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if marker.exists() and marker.read_text() == requirement:
        return python, ""
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(python), "-m", "pip", "install", "-q", requirement]]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            return None, (f"could not set up {requirement} in {venv}: "
                          f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    marker.write_text(requirement)
    return python, ""


def _topic_offsets(args: argparse.Namespace) -> dict[tuple[str, int], tuple[int, int]]:
    """(log start, end) of every partition of ``--topics``, read before a peer starts."""
    from beam_zdl import kafka
    consumer = kafka.new_consumer(args.bootstrap_servers, "bench-probe")
    parts = kafka.partitions_of(consumer, [args.topics], args.bootstrap_servers)
    marks: dict[tuple[str, int], tuple[int, int]] = kafka.watermarks(
        consumer, parts, args.bootstrap_servers)
    consumer.close()
    return marks


def _run_script(python: Path, script: str, version: str, flags: list[str]) -> dict:
    """Run ``bench/<script>`` with a peer venv's python; its last stdout line is the JSON
    result (``version`` added), a failure its last stderr line."""
    proc = subprocess.run([str(python), str(_ROOT / "bench" / script), *flags],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        return {"error": f"exit {proc.returncode}: "
                         f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}"}
    last = proc.stdout.strip().splitlines()[-1]
    try:
        result: dict = json.loads(last)
    except json.JSONDecodeError:
        return {"error": f"its last stdout line is not the JSON result: {last[:200]!r}"}
    result["version"] = version
    return result


def _quixstreams(args: argparse.Namespace, guarantee: str) -> dict:
    """quixstreams reading the topic from earliest to its end offsets at start, with
    ``guarantee``; bench/peer_quix.py checks the count and the group's commits."""
    python, why = _peer_python("quixstreams", QUIXSTREAMS)
    if python is None:
        return {"error": why}
    return _run_script(python, "peer_quix.py", QUIXSTREAMS, [
        f"--bootstrap_servers={args.bootstrap_servers}", f"--topic={args.topics}",
        f"--group=bench-quix-{uuid.uuid4().hex}", f"--guarantee={guarantee}"])


@peer("quixstreams_exactly_once")
def quixstreams_exactly_once(args: argparse.Namespace) -> dict:
    return _quixstreams(args, "exactly-once")


@peer("quixstreams_at_least_once")
def quixstreams_at_least_once(args: argparse.Namespace) -> dict:
    return _quixstreams(args, "at-least-once")


PYSPARK = "pyspark==4.2.0"
# What pyspark lacks for its Kafka source (the rest of the Maven classpath ships with it).
_SPARK_EXTRA_JARS = ("spark-sql-kafka-0-10_", "spark-token-provider-kafka-0-10_",
                     "kafka-clients-", "commons-pool2-")


def _bench_jars(component: str) -> tuple[list[Path], str]:
    """The jars of ``bench/java/<component>/pom.xml``, resolved with Maven once into
    ``.cache/peers/<component>-jars``, or why not."""
    import shutil as _shutil
    from beam_zdl.testing.jars import cache_dir
    out = cache_dir() / "peers" / f"{component}-jars"
    pom = _ROOT / "bench" / "java" / component / "pom.xml"
    marker = out / ".complete"
    if not (marker.exists() and marker.read_text() == pom.read_text()):
        mvn = _shutil.which("mvn")
        if mvn is None:
            return [], f"mvn not found: it resolves the jars of {pom}"
        proc = subprocess.run(
            [mvn, "-q", "-B", f"-Dmaven.repo.local={cache_dir() / 'm2'}", "-f", str(pom),
             "dependency:copy-dependencies", f"-DoutputDirectory={out}",
             "-DincludeScope=runtime"], capture_output=True, text=True)
        if proc.returncode != 0:
            return [], f"Maven could not resolve {pom}: {proc.stdout[-500:]}"
        marker.write_text(pom.read_text())
    return sorted(out.glob("*.jar")), ""


def _spark_jars() -> tuple[list[str], str]:
    """The extra jars of the Spark peer (bench/java/spark-kafka), those pyspark lacks."""
    jars, why = _bench_jars("spark-kafka")
    return [str(j) for j in jars if j.name.startswith(_SPARK_EXTRA_JARS)], why


@peer("spark_structured_streaming")
def spark_structured_streaming(args: argparse.Namespace) -> dict:
    """Spark Structured Streaming, availableNow, local[2], a checkpointLocation; the whole
    run counts (SparkSession start-up included, as our peers count the whole call)."""
    python, why = _peer_python("spark", PYSPARK)
    if python is None:
        return {"error": why}
    jars, why = _spark_jars()
    if not jars:
        return {"error": why}
    marks = _topic_offsets(args)
    ends = {str(p): high for (_, p), (_, high) in marks.items()}
    expected = sum(high - low for low, high in marks.values())
    return _run_script(python, "peer_spark.py", PYSPARK, [
        f"--bootstrap_servers={args.bootstrap_servers}", f"--topic={args.topics}",
        f"--checkpoint={args.workdir}/spark-{uuid.uuid4().hex}", f"--jars={','.join(jars)}",
        f"--expected={expected}", f"--ends={json.dumps(ends)}"])


PYFLINK = "apache-flink==2.2.1"


@peer("pyflink")
def pyflink(args: argparse.Namespace) -> dict:
    """pyflink: a bounded Kafka table (flink-sql-connector-kafka 5.0.0-2.2), streaming mode,
    parallelism 2, checkpoints committing offsets, a mini-batch count; the whole run counts
    (start-up too)."""
    python, why = _peer_python("pyflink", PYFLINK)
    if python is None:
        return {"error": why}
    jars, why = _bench_jars("flink-kafka")
    if not jars:
        return {"error": why}
    from beam_zdl import kafka
    marks = _topic_offsets(args)
    group = f"bench-pyflink-{uuid.uuid4().hex}"
    result = _run_script(python, "peer_pyflink.py", PYFLINK, [
        f"--bootstrap_servers={args.bootstrap_servers}", f"--topic={args.topics}",
        f"--group={group}", f"--jar={jars[0]}"])
    expected = sum(high - low for low, high in marks.values())
    if "error" not in result and result.get("records") != expected:
        result["error"] = f"read {result.get('records')} records, expected {expected}"
    committed: dict = {}
    if "error" not in result:
        probe = kafka.new_consumer(args.bootstrap_servers, group)
        committed = kafka.committed_offsets(probe, list(marks), args.bootstrap_servers)
        probe.close()
    result["durable_progress"] = bool(committed) and all(
        committed.get(tp) == high for tp, (_, high) in marks.items())
    result["durable_check"] = ("group committed offsets (commit on checkpoint) equal the end "
                               "offsets")
    if committed and not result["durable_progress"]:
        # The connector may drop the final checkpoint's commit (see bench/peer_pyflink.py):
        # keep how far the group got.
        result["committed_offsets"] = {str(p): o for (_, p), o in sorted(committed.items())}
    return result


@peer("java_kafkaio_xlang")
def java_kafkaio_xlang(args: argparse.Namespace) -> dict:
    """Beam's Java KafkaIO through apache_beam.io.kafka.ReadFromKafka (cross-language).

    Needs the Beam Java IO expansion service of the installed Beam version (resolved
    with Maven) and a Java SDK harness, which Beam starts as a Docker container.
    """
    import apache_beam as beam
    version = beam.__version__
    artifact = f"org.apache.beam:beam-sdks-java-io-expansion-service:{version}"
    jar, why = _resolve_jar(artifact)
    if jar is None:
        return {"error": why}
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "info"], capture_output=True,
                                        timeout=30).returncode != 0:
        return {"error": f"{artifact} resolved, but the Java SDK harness that runs KafkaIO "
                         "needs a Docker engine (Beam's default environment for Java "
                         "transforms) and none runs here"}
    from apache_beam.io.kafka import ReadFromKafka
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.transforms.external import JavaJarExpansionService
    total = args.records
    started = time.monotonic()
    with beam.Pipeline(options=PipelineOptions(["--runner=PrismRunner"])) as p:
        (p | ReadFromKafka(consumer_config={"bootstrap.servers": args.bootstrap_servers,
                                            "auto.offset.reset": "earliest",
                                            "group.id": f"bench-{uuid.uuid4().hex}"},
                           topics=[args.topics], max_num_records=total,
                           expansion_service=JavaJarExpansionService(str(jar)))
         | beam.Map(lambda kv: len(kv[1] or b"")) | beam.CombineGlobally(sum))
    seconds = time.monotonic() - started
    return {"records": total, "bytes": total * args.value_bytes, "seconds": seconds}


def _resolve_jar(artifact: str) -> tuple[Path | None, str]:
    """The artifact's jar from Maven (shared cache), or None and the reason."""
    from beam_zdl.testing.jars import cache_dir
    group, name, version = artifact.split(":")
    mvn = shutil.which("mvn")
    if mvn is None:
        return None, f"Maven (mvn) is not on PATH, so {artifact} cannot be resolved"
    repo = cache_dir() / "m2"
    jar = repo.joinpath(*group.split("."), name, version, f"{name}-{version}.jar")
    if jar.exists():
        return jar, ""
    with tempfile.TemporaryDirectory() as tmp:
        pom = Path(tmp) / "pom.xml"
        pom.write_text(
            '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0'
            '</modelVersion><groupId>bench</groupId><artifactId>xlang</artifactId>'
            '<version>1</version><dependencies><dependency>'
            f'<groupId>{group}</groupId><artifactId>{name}</artifactId>'
            f'<version>{version}</version><scope>runtime</scope></dependency></dependencies>'
            '</project>')
        try:
            proc = subprocess.run([mvn, "-q", "-B", f"-Dmaven.repo.local={repo}", "-f", str(pom),
                                   "-U", "dependency:resolve"],
                                  capture_output=True, text=True, timeout=180)
        except subprocess.TimeoutExpired:
            return None, f"Maven did not resolve {artifact} within 180 s"
    if jar.exists():
        return jar, ""
    served = _served_versions(repo / group.replace(".", "/") / "beam-sdks-java-core")
    return None, (f"Maven could not resolve {artifact} (exit {proc.returncode}): the package "
                  f"registry reachable here does not serve Beam Java {version}"
                  f"{f' (Beam Java versions in the local Maven cache: {served})' if served else ''}"
                  "; and even with an older expansion service the Java SDK harness that runs "
                  "KafkaIO needs a Docker engine, which does not run here")


def _served_versions(folder: Path) -> str:
    found = sorted((p.name for p in folder.glob("*") if (p / f"{folder.name}-{p.name}.jar")
                    .exists()), key=lambda v: [int(x) for x in re.findall(r"\d+", v)])
    return ", ".join(found[-3:])


# --- recovery and memory --------------------------------------------------------------------

@peer("driver_child")
def driver_child(args: argparse.Namespace) -> dict:
    """A driver for the recovery peer: logs at INFO to stderr, checkpoint in --workdir."""
    logging.getLogger("beam_zdl").setLevel(logging.INFO)  # batch lines, timed by the parent
    import beam_zdl
    options = beam_zdl.ZdlOptions([
        f"--bootstrap_servers={args.bootstrap_servers}", f"--topics={args.topics}",
        f"--checkpoint_dir={args.workdir}/ckpt", f"--consumer_group={args.group}",
        "--starting_offsets=earliest", "--trigger=available_now",
        f"--max_records_per_partition={args.batch_per_partition}", *_WORKERS[1]])
    summary = beam_zdl.run_micro_batches(_build, options)
    return {"records": summary.records, "batches": summary.batches,
            "replayed": summary.replayed}


def _run_child(args: argparse.Namespace, workdir: str, group: str, env: dict) -> dict:
    """Run driver_child; time its start-up, first completed batch and exit."""
    cmd = [sys.executable, "-m", "bench.peers", "driver_child",
           f"--bootstrap_servers={args.bootstrap_servers}", f"--topics={args.topics}",
           f"--workdir={workdir}", f"--group={group}",
           f"--batch_per_partition={args.batch_per_partition}"]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    times: dict[str, float] = {}
    tail: list[str] = []

    def read_stderr() -> None:
        for line in proc.stderr:
            now = time.monotonic() - started
            tail.append(line)
            del tail[:-20]
            if "driver epoch" in line:
                times.setdefault("startup_s", now)
            elif " done: " in line:
                times.setdefault("first_batch_s", now)
                times["last_batch_s"] = now

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    out = proc.stdout.read()
    proc.wait()
    reader.join()
    times["exit_s"] = time.monotonic() - started
    return {"returncode": proc.returncode, "times": times,
            "result": json.loads(out.strip().splitlines()[-1]) if proc.returncode == 0 else None,
            "tail": "".join(tail[-3:])}


@peer("recovery")
def recovery(args: argparse.Namespace) -> dict:
    """SIGKILL a direct-mode driver after its 2nd batch ran but before it completed
    (``BEAM_ZDL_CRASH_AT=after_run:2``); restart it; time the restart to its first
    completed batch (the replay) and to catch-up (every record read, exit)."""
    workdir = f"{args.workdir}/recovery-{uuid.uuid4().hex}"
    group = f"bench-recovery-{uuid.uuid4().hex}"
    env = dict(os.environ, BEAM_ZDL_CRASH_AT="after_run:2")
    first = _run_child(args, workdir, group, env)
    if first["returncode"] != -signal.SIGKILL:
        return {"error": f"the first driver was not killed (exit {first['returncode']}): "
                         f"{first['tail'][-300:]}"}
    env.pop("BEAM_ZDL_CRASH_AT")
    second = _run_child(args, workdir, group, env)
    if second["returncode"] != 0 or second["result"] is None:
        return {"error": f"the restarted driver failed (exit {second['returncode']}): "
                         f"{second['tail'][-300:]}"}
    t = second["times"]
    return {"killed_after_s": round(first["times"]["exit_s"], 2),
            "restart_startup_s": round(t.get("startup_s", float("nan")), 2),
            "restart_to_first_batch_s": round(t.get("first_batch_s", float("nan")), 2),
            "restart_to_catch_up_s": round(t["exit_s"], 2),
            "batch_records": args.batch_per_partition * args.partitions,
            "replayed": second["result"]["replayed"], "records_after_restart":
            second["result"]["records"], "batches_after_restart": second["result"]["batches"]}


@peer("receiver_rss")
def receiver_rss(args: argparse.Namespace) -> dict:
    """A stand-alone ``beam-zdl receive --drain_to_end`` (local disk) draining the whole
    backlog: its rate (process start to exit) and its peak RSS, as a user runs it. It runs
    in its own process, which imports no Beam; this one (without Beam either) only
    watches it."""
    wal_dir = f"{args.workdir}/rss-wal-{uuid.uuid4().hex}"
    command = [sys.executable, "-m", "beam_zdl.cli", "receive",
               f"--bootstrap_servers={args.bootstrap_servers}", f"--topics={args.topics}",
               "--starting_offsets=earliest", f"--wal_dir={wal_dir}",
               f"--consumer_group=bench-{uuid.uuid4().hex}", "--drain_to_end"]
    after_imports = _imports_rss_mb("beam_zdl.cli, beam_zdl.receiver, confluent_kafka")
    with open(f"{wal_dir}.log", "wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(command, cwd=_ROOT, stdout=subprocess.PIPE, stderr=log)
        peak = _watch_peak_rss_mb(proc)
        out = proc.stdout.read().decode() if proc.stdout else ""
        seconds = time.monotonic() - started
    if proc.returncode != 0:
        return {"error": f"beam-zdl receive exited {proc.returncode} (log {wal_dir}.log)"}
    stats = json.loads(out.strip().splitlines()[-1])
    return {"records": stats["records"], "bytes": stats["records"] * args.value_bytes,
            "seconds": seconds, "segments": stats["segments"],
            "peak_buffered_mb": stats["peak_buffered_bytes"] / 1e6,
            "peak_rss_mb": peak, "rss_after_imports_mb": after_imports}


def _watch_peak_rss_mb(proc: subprocess.Popen) -> float:
    """``proc``'s peak RSS (VmHWM, a high-water mark) polled until it exits; then reaps it.

    Not ``ru_maxrss``: Linux keeps the parent's peak across fork + exec."""
    peak = 0.0
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:
            pass  # exited between poll() and the read
        time.sleep(0.02)
    return peak


def _imports_rss_mb(modules: str) -> float:
    """Peak RSS of a fresh Python that imports ``modules`` (comma-separated)."""
    code = (f"import {modules}, pathlib; print(next(line.split()[1] for line in pathlib.Path("
            "'/proc/self/status').read_text().splitlines() if line.startswith('VmHWM:')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=_ROOT, check=True,
                          capture_output=True, text=True)
    return int(done.stdout) / 1024


def _output_topic(args: argparse.Namespace) -> str:
    """A fresh output topic with as many partitions as the input."""
    from confluent_kafka.admin import AdminClient, NewTopic
    name = f"bench-out-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": args.bootstrap_servers})
    admin.create_topics([NewTopic(name, num_partitions=args.partitions,
                                  replication_factor=1)])[name].result(60)
    time.sleep(1.0)  # leaders elected
    return name


@peer("sink_bare_producer")
def sink_bare_producer(args: argparse.Namespace) -> dict:
    """A plain idempotent confluent-kafka produce loop of ``--records`` values: the
    practical limit of one Python producer (no reading)."""
    from confluent_kafka import Producer
    topic = _output_topic(args)
    producer = Producer({"bootstrap.servers": args.bootstrap_servers, "linger.ms": 5,
                         "enable.idempotence": True, "acks": "all"})
    value = b"x" * args.value_bytes
    started = time.monotonic()
    for i in range(args.records):
        while True:
            try:
                producer.produce(topic, value=value, key=str(i).encode())
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(120) == 0
    seconds = time.monotonic() - started
    return {"records": args.records, "bytes": args.records * args.value_bytes,
            "seconds": seconds}


def _sink(args: argparse.Namespace, exactly_once: bool) -> dict:
    """Kafka → run_micro_batches (direct, 1 worker) → WriteToKafka → Kafka, end to end."""
    import apache_beam as beam
    import beam_zdl
    out_topic = _output_topic(args)

    def build(records, batch) -> None:
        (records
         | beam.Map(lambda r: (r.id, r.value))
         | beam_zdl.WriteToKafka(out_topic, args.bootstrap_servers, batch=batch,
                                 exactly_once=exactly_once, shards=4))

    return _micro_batches(args, [*_WORKERS[1], f"--max_records_per_partition="
                                 f"{args.batch_per_partition}"], build=build)


@peer("sink_exactly_once")
def sink_exactly_once(args: argparse.Namespace) -> dict:
    return _sink(args, exactly_once=True)


@peer("sink_at_least_once")
def sink_at_least_once(args: argparse.Namespace) -> dict:
    return _sink(args, exactly_once=False)


def _streaming_job(args: argparse.Namespace, runner_args: list[str]) -> dict:
    """tests/streaming_proc.py (ids) over the whole topic; times from submission and first output.

    Output files are written by the read's own stage, one per bundle; each is
    counted once (they appear by atomic rename).
    """
    out = Path(tempfile.mkdtemp(prefix="flink-stream-", dir=args.workdir))
    log = open(out.parent / f"{out.name}.log", "wb")
    started = time.monotonic()
    job = subprocess.Popen(
        [sys.executable, "-m", "tests.streaming_proc", "ids", str(out),
         f"--bootstrap_servers={args.bootstrap_servers}", f"--topics={args.topics}",
         f"--consumer_group=bench-{uuid.uuid4().hex}", "--starting_offsets=earliest",
         *runner_args],
        cwd=_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    seen: set[str] = set()
    count = 0
    first = None
    try:
        deadline = started + 540
        while count < args.records:
            if job.poll() is not None or time.monotonic() > deadline:
                return {"error": f"streaming job ended or timed out after {count} records "
                                 f"(log {log.name})"}
            for path in out.glob("*.jsonl"):
                if path.name not in seen:
                    seen.add(path.name)
                    count += path.read_bytes().count(b"\n")
            if count and first is None:
                first = time.monotonic()
            time.sleep(0.2)
        end = time.monotonic()
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    shutil.rmtree(out, ignore_errors=True)
    return {"records": count, "bytes": count * args.value_bytes, "seconds": end - started,
            "first_read_s": first - started,
            "records_per_s_after_first_read": count / (end - first)}


@peer("flink_local_streaming")
def flink_local_streaming(args: argparse.Namespace) -> dict:
    """The streaming read on Flink [local] (embedded cluster, LOOPBACK workers)."""
    from beam_zdl.testing.flink import flink_runner_args
    return _streaming_job(args, flink_runner_args(parallelism=1))


@peer("flink_cluster_streaming")
def flink_cluster_streaming(args: argparse.Namespace) -> dict:
    """The streaming read on a LocalFlink session cluster (2 TaskManagers, parallelism 2)."""
    from beam_zdl.testing import LocalFlink
    workdir = Path(tempfile.mkdtemp(prefix="localflink-", dir=args.workdir))
    with LocalFlink(workdir=workdir) as flink:
        return _streaming_job(args, flink.runner_args(parallelism=2))


def _spread(seconds: list[float]) -> dict:
    """Median, quartiles and range of a list of durations (at least 2)."""
    import statistics
    ordered = sorted(seconds)
    q = statistics.quantiles(ordered, n=4)
    return {"n": len(ordered), "median_s": round(statistics.median(ordered), 3),
            "p25_s": round(q[0], 3), "p75_s": round(q[2], 3), "min_s": round(ordered[0], 3),
            "max_s": round(ordered[-1], 3), "all_s": [round(x, 3) for x in seconds]}


def _empty_batches(args: argparse.Namespace, flags: list[str], count: int) -> list[float]:
    """``count`` batch pipelines reading empty ranges (no record), through one job server:
    build, submit, run to DONE, metrics. What a batch with nothing to read costs (the loop
    plans none; its plan, completion and commit take milliseconds)."""
    import beam_zdl
    from beam_zdl.batch import Batch
    from beam_zdl.batch_options import batch_options
    from beam_zdl.io import ReadFromKafka
    from beam_zdl.microbatch.batch_ranges import BatchRanges
    from beam_zdl.microbatch.loop import run_batch_pipeline_metrics
    from beam_zdl.ranges import PartitionRange
    from beam_zdl.runners import flink_job_server
    options = beam_zdl.ZdlOptions(flags)
    ranges = tuple(PartitionRange(args.small_topic, p, 0, 0) for p in range(args.partitions))
    took = []
    with flink_job_server(options):
        for batch_id in range(count):
            batch = Batch(batch_id, ranges)
            started = time.monotonic()
            run_batch_pipeline_metrics(
                _build, options, batch,
                ReadFromKafka(ranges=ranges, options=batch_options(options),
                              ranges_input=BatchRanges()))
            took.append(time.monotonic() - started)
    return took


@peer("flink_batches")
def flink_batches(args: argparse.Namespace) -> dict:
    """Micro-batches on a LocalFlink session cluster (2 TaskManagers of 2 slots,
    parallelism 2, jobs staging no jars, beam_zdl.external_pool), one cluster for all:

    * ``empty``: 1 + ``--flink_batches`` batch pipelines reading nothing (the first, which
      pays the job server's start, left out);
    * ``tiny``: ``run_micro_batches`` over ``--small_topic``, 2 records per partition per
      batch, 1 + ``--flink_batches`` batches; each batch's cycle (from its pipeline's start
      to the next one's: submit, run, complete, commit, plan), the first left out;
    * ``one_batch``: ``run_micro_batches`` over ``--topics`` (the run's 1M records) in one
      batch: records/s of the whole call (job server start included) and of the batch.
    """
    from beam_zdl.testing import LocalFlink
    workdir = Path(tempfile.mkdtemp(prefix="localflink-", dir=args.workdir))
    count = args.flink_batches + 1
    out: dict = {}
    with LocalFlink(taskmanagers=2, slots=2, workdir=workdir) as flink:
        runner = flink.runner_args(parallelism=2, checkpointing_interval_ms=None)
        small = argparse.Namespace(**{**vars(args), "topics": args.small_topic})
        empty = _empty_batches(args, _zdl_flags(small, f"{args.workdir}/ckpt-empty", *runner),
                               count)
        out["empty"] = {**_spread(empty[1:]), "first_s": round(empty[0], 3)}
        starts: list[float] = []

        def build(records, batch) -> None:
            starts.append(time.monotonic())
            _build(records, batch)

        r = _micro_batches(small, [*runner, "--max_records_per_partition=2",
                                   f"--max_batches={count}"], build=build)
        ended = time.monotonic()
        cycles = [b - a for a, b in zip(starts, starts[1:] + [ended])]
        out["tiny"] = {**_spread(cycles[1:]), "first_s": round(cycles[0], 3),
                       "records_per_batch": r["records"] // max(1, r["batches"])}
        import beam_zdl

        class _Durations(beam_zdl.ProgressListener):
            def on_progress(self, progress) -> None:
                batches.append(progress.durations_s["total"])

        batches: list[float] = []
        started = time.monotonic()
        summary = beam_zdl.run_micro_batches(_build, beam_zdl.ZdlOptions(_zdl_flags(
            args, f"{args.workdir}/ckpt-{uuid.uuid4().hex}", *runner)), [_Durations()])
        out["one_batch"] = {"records": summary.records, "batches": summary.batches,
                            "seconds": round(time.monotonic() - started, 3),
                            "batch_s": round(sum(batches), 3)}
    shutil.rmtree(workdir, ignore_errors=True)
    return out


class _TreeRss:
    """Peak RSS (and PSS) summed over this process and its descendants, sampled every
    0.1 s: a peer's memory with its worker processes. RSS counts pages shared between
    processes once per process; PSS splits them. Also each process's own peak RSS
    (:meth:`by_process`: the driver, then the others by pid) and, for a warm worker, its
    RSS when it said it was ready (its imports, before any batch)."""

    def __init__(self, period_s: float = 0.1) -> None:
        self.period_s = period_s
        self.peak = (0.0, 0.0)
        self.own: dict[int, float] = {}  # pid -> peak RSS MB
        self.ready: dict[int, float] = {}  # warm worker pid -> RSS MB at "ready"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        tree = self

        class _Ready(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if "ready after" in record.getMessage() and record.args:
                    pid = int(record.args[0])  # type: ignore[index]
                    tree.ready[pid] = _rss_mb(pid)

        pool_log = logging.getLogger("beam_zdl.worker_pool")
        pool_log.addHandler(_Ready())
        pool_log.setLevel(logging.INFO)

    def start(self) -> "_TreeRss":
        self._thread.start()
        return self

    def stop(self) -> tuple[float, float]:
        self._stop.set()
        self._thread.join()
        return round(self.peak[0], 1), round(self.peak[1], 1)

    def by_process(self) -> dict[str, dict[str, float]]:
        """Per process: peak RSS MB, and RSS MB after its imports where known."""
        me = os.getpid()
        out = {}
        for pid in sorted(self.own, key=lambda p: (p != me, p)):
            cell = {"peak_rss_mb": round(self.own[pid], 1)}
            if pid in self.ready:
                cell["ready_rss_mb"] = round(self.ready[pid], 1)
            out["driver" if pid == me else str(pid)] = cell
        return out

    @staticmethod
    def _pids(pid: int) -> list[int]:
        out, todo = [], [pid]
        while todo:
            p = todo.pop()
            out.append(p)
            for task in Path(f"/proc/{p}/task").glob("*/children"):
                try:
                    todo.extend(int(c) for c in task.read_text().split())
                except OSError:
                    pass
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            rss = pss = 0
            for pid in self._pids(os.getpid()):
                mine = 0
                try:
                    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                        if line.startswith("Rss:"):
                            mine = int(line.split()[1])
                            rss += mine
                        elif line.startswith("Pss:"):
                            pss += int(line.split()[1])
                except (OSError, ValueError):
                    pass
                self.own[pid] = max(self.own.get(pid, 0.0), mine / 1024)
            self.peak = (max(self.peak[0], rss / 1024), max(self.peak[1], pss / 1024))


def _rss_mb(pid: int) -> float:
    """A process's RSS now (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _own_peak_rss_mb() -> float:
    """This process's peak RSS. Linux's ``ru_maxrss`` keeps the parent's peak across
    fork + exec (a 230 MB parent shows as 230 MB in every child); VmHWM does not."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("peer", choices=sorted(PEERS))
    parser.add_argument("--bootstrap_servers", required=True)
    parser.add_argument("--topics", required=True)
    parser.add_argument("--workdir", default="/tmp")
    parser.add_argument("--value_bytes", type=int, default=100)
    parser.add_argument("--records", type=int, default=0)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--gcs_bucket", default="")
    parser.add_argument("--group", default="")
    parser.add_argument("--batch_per_partition", type=int, default=62_500)
    parser.add_argument("--small_topic", default="", help="flink_batches: the tiny batches' topic")
    parser.add_argument("--flink_batches", type=int, default=12,
                        help="flink_batches: batches measured per kind (the first is extra)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # Reading every descendant's smaps_rollup walks each JVM's page tables; ten times a
    # second it competes with a Flink cluster for the 2 cores (a micro-batch's median cost
    # was 7.2 s sampled so, 3.6 s not sampled, minutes apart on a shared machine): peers
    # running JVMs are sampled every 2 s.
    tree = _TreeRss(2.0 if args.peer in _CLUSTER_PEERS else 0.1).start()
    result = PEERS[args.peer](args)
    # A peer that measures another process (receiver_rss) reports that one's peak.
    result.setdefault("peak_rss_mb", _own_peak_rss_mb())
    result["peak_children_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result["peak_tree_rss_mb"], result["peak_tree_pss_mb"] = tree.stop()
    result["rss_by_process"] = tree.by_process()
    # CPU of this process and its reaped children (worker processes, closed by now): unlike
    # seconds, barely moved by other work on the machine.
    result["cpu_s"] = round(_tree_cpu_s(), 3)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
