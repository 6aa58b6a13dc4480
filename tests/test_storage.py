"""Create-once storage on every backend: local, GCS (emulator), HDFS (MiniDFSCluster)."""

from __future__ import annotations

import os
import threading

import pytest

from beam_zdl.errors import ObjectExistsError, StorageError
from beam_zdl.storage import GcsStorage, HdfsStorage, LocalStorage, ObjectInfo, open_storage


def test_open_storage_picks_backend_by_scheme(tmp_path):
    assert isinstance(open_storage(str(tmp_path)), LocalStorage)
    assert isinstance(open_storage(f"file://{tmp_path}"), LocalStorage)
    assert isinstance(open_storage("gs://bucket/prefix"), GcsStorage)
    assert isinstance(open_storage("hdfs://namenode:9870/zdl"), HdfsStorage)


@pytest.mark.parametrize("uri", ["s3://bucket/x", "ftp://host/x"])
def test_unsupported_scheme_is_an_error_naming_the_uri(uri):
    with pytest.raises(StorageError, match=r"unsupported storage URI .*" + uri.split(":")[0]):
        open_storage(uri)


def test_hdfs_uri_without_port_is_an_error():
    with pytest.raises(StorageError, match="hdfs://host:port"):
        open_storage("hdfs://namenode/zdl")


def test_round_trip(any_storage_uri):
    store = open_storage(any_storage_uri)
    assert store.list() == []
    assert not store.exists("a/b.bin")

    store.create("a/b.bin", b"hello")
    store.create("top.bin", b"")

    assert store.exists("a/b.bin")
    assert store.read("a/b.bin") == b"hello"
    assert store.read("top.bin") == b""
    assert store.list() == [ObjectInfo("a/b.bin", 5), ObjectInfo("top.bin", 0)]
    assert store.uri("a/b.bin") == any_storage_uri.rstrip("/") + "/a/b.bin"

    store.delete("a/b.bin")
    assert not store.exists("a/b.bin")
    assert store.list() == [ObjectInfo("top.bin", 0)]
    store.delete("a/b.bin")  # deleting a missing object is not an error


def test_read_missing_raises_naming_the_uri(any_storage_uri):
    store = open_storage(any_storage_uri)
    with pytest.raises(StorageError, match="missing.bin"):
        store.read("missing.bin")


def test_create_once(any_storage_uri):
    store = open_storage(any_storage_uri)
    store.create("plan/0001", b"original")

    with pytest.raises(ObjectExistsError, match="plan/0001") as info:
        store.create("plan/0001", b"impostor")

    assert store.uri("plan/0001") in str(info.value)
    assert store.read("plan/0001") == b"original"
    assert store.list() == [ObjectInfo("plan/0001", 8)]


def test_list_by_prefix_sorted_without_temp_files(any_storage_uri):
    store = open_storage(any_storage_uri)
    for name in ["seg/0003", "seg/0001", "seg/0002", "segx/0001", "plans/0001", "s"]:
        store.create(name, name.encode())

    assert [o.name for o in store.list("seg/")] == ["seg/0001", "seg/0002", "seg/0003"]
    assert [o.name for o in store.list("seg")] == [
        "seg/0001", "seg/0002", "seg/0003", "segx/0001"]
    assert [o.name for o in store.list("s")] == [
        "s", "seg/0001", "seg/0002", "seg/0003", "segx/0001"]
    assert [o.name for o in store.list("nothing")] == []
    # What a crashed writer leaves behind (a hidden temp file) is never listed.
    store.create("seg/.0004.0123abcd.tmp", b"partial")
    names = [o.name for o in store.list()]
    assert names == sorted(names)
    assert len(names) == 6
    assert not any(n.rsplit("/", 1)[-1].startswith(".") or n.endswith(".tmp") for n in names)


def test_prefix_of_root_does_not_leak_into_sibling_roots(any_storage_uri):
    inner = open_storage(any_storage_uri)
    sibling = open_storage(any_storage_uri.rstrip("/") + "-sibling")
    sibling.create("x", b"x")
    assert inner.list() == []
    inner.create("y", b"y")
    assert [o.name for o in sibling.list()] == ["x"]


def test_read_range_reads_only_the_bytes_asked_for(any_storage_uri):
    store = open_storage(any_storage_uri)
    data = os.urandom(300_000)
    store.create("obj.bin", data)
    assert store.read_range("obj.bin", 0, 8) == data[:8]
    assert store.read_range("obj.bin", 123_456, 70_000) == data[123_456:193_456]
    assert store.read_range("obj.bin", len(data) - 10, 10) == data[-10:]
    assert store.read_range("obj.bin", len(data) - 10, 100) == data[-10:]  # short at the end
    assert store.read_range("obj.bin", 5, 0) == b""
    with pytest.raises(StorageError, match="missing.bin"):
        store.read_range("missing.bin", 0, 10)
    with pytest.raises(ValueError, match="offset >= 0"):
        store.read_range("obj.bin", -1, 10)


def test_five_megabyte_round_trip(any_storage_uri):
    store = open_storage(any_storage_uri)
    data = os.urandom(5 * 1024 * 1024)
    store.create("big.bin", data)
    assert store.read("big.bin") == data
    assert store.list() == [ObjectInfo("big.bin", len(data))]


@pytest.mark.parametrize("round_", range(3))
def test_racing_creates_exactly_one_wins(any_storage_uri, round_):
    writers = 2
    barrier = threading.Barrier(writers)
    won: list[int] = []
    lost: list[int] = []
    failed: list[BaseException] = []

    def write(i: int) -> None:
        store = open_storage(any_storage_uri)  # each writer is its own client
        barrier.wait()
        try:
            store.create("epoch/0001", f"writer-{i}".encode())
            won.append(i)
        except ObjectExistsError:
            lost.append(i)
        except BaseException as err:  # noqa: BLE001 — reported below
            failed.append(err)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert failed == []
    assert len(won) == 1 and len(lost) == writers - 1
    store = open_storage(any_storage_uri)
    assert store.read("epoch/0001") == f"writer-{won[0]}".encode()
    assert [o.name for o in store.list()] == ["epoch/0001"]


def test_storage_pickles_and_works_after_unpickling(any_storage_uri):
    # Beam pickles DoFns, and the storage they hold, to ship them to workers.
    import pickle

    store = open_storage(any_storage_uri)
    store.create("a", b"before")
    store.read("a")  # the client/session now exists and must not be pickled
    clone = pickle.loads(pickle.dumps(store))
    assert clone.read("a") == b"before"
    clone.create("b", b"after")
    assert [o.name for o in store.list()] == ["a", "b"]


def test_gcs_missing_bucket_is_a_storage_error_naming_it(gcs):
    import uuid

    store = open_storage(f"gs://missing-{uuid.uuid4().hex[:12]}/root")
    with pytest.raises(StorageError, match=r"gs://missing-.*/root/x.*bucket") as info:
        store.create("x", b"x")
    assert not isinstance(info.value, ObjectExistsError)
    with pytest.raises(StorageError, match="does not exist"):
        store.list()


def test_hdfs_unreachable_is_a_storage_error_naming_the_uri():
    from beam_zdl.testing._process import free_port

    uri = f"hdfs://127.0.0.1:{free_port()}/zdl"
    store = HdfsStorage(uri, attempts=2)
    with pytest.raises(StorageError, match=r"unreachable after 2 attempts.*HTTP address"):
        store.exists("x")


def test_hdfs_server_errors_carry_its_message(hdfs):
    import uuid

    store = open_storage(f"{hdfs.url}/{uuid.uuid4().hex}")
    store.create("file", b"x")
    with pytest.raises(StorageError, match=r"hdfs://.*/file/child.*ParentNotDirectory") as info:
        store.create("file/child", b"y")
    assert not isinstance(info.value, ObjectExistsError)
