"""beam_zdl.external_pool: the EXTERNAL-environment worker pool, over its real gRPC service.

Two callers (two gRPC channels, as two TaskManagers) start a worker with the same id,
as Flink's TaskManagers do (each numbers its workers from 1); stopping one caller's
worker must leave the other's running. The workers point at a control address where
nothing listens, so they stay up, retrying, until stopped.
"""

from __future__ import annotations

import os

import grpc
from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc, endpoints_pb2

from beam_zdl.external_pool import serve
from beam_zdl.testing._process import free_port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not open(f"/proc/{pid}/stat").read().split(") ")[1].startswith("Z")


def test_workers_of_two_callers_with_the_same_id_are_stopped_apart():
    port = free_port()
    server, pool = serve(port, spares=1)
    # Own subchannels: two connections, as two TaskManager JVMs have (Python channels to
    # one address otherwise share one connection, so one peer).
    channels = [grpc.insecure_channel(f"localhost:{port}",
                                      options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(2)]
    try:
        stubs = [beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolStub(c) for c in channels]
        control = endpoints_pb2.ApiServiceDescriptor(url=f"localhost:{free_port()}")
        for stub in stubs:
            answer = stub.StartWorker(beam_fn_api_pb2.StartWorkerRequest(
                worker_id="1-1", control_endpoint=control), timeout=60)
            assert not answer.error
        started = pool.workers()
        assert len(started) == 2 and {wid for _, wid in started} == {"1-1"}
        # Which stub is which caller: stop through the first and see which one went.
        stubs[0].StopWorker(beam_fn_api_pb2.StopWorkerRequest(worker_id="1-1"), timeout=30)
        left = pool.workers()
        assert len(left) == 1
        [gone_pid] = [pid for key, pid in started.items() if key not in left]
        [kept_pid] = left.values()
        assert not _alive(gone_pid) and _alive(kept_pid)
        stubs[1].StopWorker(beam_fn_api_pb2.StopWorkerRequest(worker_id="1-1"), timeout=30)
        assert pool.workers() == {} and not _alive(kept_pid)
    finally:
        for channel in channels:
            channel.close()
        server.stop(grace=None)
        pool.close()
