"""How a micro-batch hands its planned ranges to ``ReadFromKafka`` (a :class:`RangesInput`).

On the run's warm runner (:mod:`beam_zdl.worker_pool`) the ranges travel as the
element of a :class:`~beam_zdl.worker_pool.PayloadImpulse`: runner data, not
stage content, so the read's stages are identical in every batch and their
bundle processors are reused. The FnApiRunner hands a splittable DoFn's input
to all its workers by itself, so no shuffle is added there; any other runner
(Flink, Dataflow) gets :class:`~beam_zdl.io.CreateRanges`.

Payload format (JSON, UTF-8)::

    [1, [[topic, partition, start, stop], ...]]

The first item is the format version; driver and workers must agree on it.
"""

from __future__ import annotations

import json

import apache_beam as beam

from beam_zdl.errors import ZdlError
from beam_zdl.io import CreateRanges, RangesInput
from beam_zdl.ranges import PartitionRange
from beam_zdl.worker_pool import PayloadImpulse, feeds_payload_impulses

__all__ = ["BatchRanges", "encode_chunks", "decode_chunks"]

_CHUNKS_FORMAT = 1


def encode_chunks(chunks: list[PartitionRange]) -> bytes:
    """The ranges of a read as the payload of its PayloadImpulse."""
    return json.dumps([_CHUNKS_FORMAT, [list(c) for c in chunks]]).encode()


def decode_chunks(payload: bytes) -> list[PartitionRange]:
    """The ranges :func:`encode_chunks` encoded.

    Raises:
        ZdlError: the runner did not hand this read its ranges (an empty payload):
            reading nothing would lose a batch, so the batch fails and is replayed.
    """
    if not payload:
        raise ZdlError("ReadFromKafka: the runner did not hand this read its ranges (an empty "
                       "Impulse element): only beam_zdl's warm runner does; the batch fails "
                       "and is replayed from its recorded plan. Please report this as a bug.")
    version, chunks = json.loads(payload)
    if version != _CHUNKS_FORMAT:
        raise ZdlError(f"ReadFromKafka: ranges of format {version}, this version reads "
                       f"{_CHUNKS_FORMAT}: driver and workers run different beam_zdl versions")
    return [PartitionRange(str(t), int(p), int(a), int(b)) for t, p, a, b in chunks]


class BatchRanges(RangesInput):
    """A micro-batch's ranges, as the runner of the batch takes them best."""

    def expand(self, pbegin: beam.pvalue.PBegin,
               chunks: list[PartitionRange]) -> beam.PCollection[PartitionRange]:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner
        runner = pbegin.pipeline.runner
        if feeds_payload_impulses(runner):
            fed: beam.PCollection[PartitionRange] = (
                pbegin | "Ranges" >> PayloadImpulse(encode_chunks(chunks))
                | "Chunks" >> beam.FlatMap(decode_chunks).with_output_types(PartitionRange))
            return fed
        if isinstance(runner, FnApiRunner):
            # It runs an SDF's processing in a stage of its own and hands each worker a
            # share of its input: a Reshuffle would only add a stage (~0.1 s a batch).
            created: beam.PCollection[PartitionRange] = (
                pbegin | "Ranges" >> beam.Create(chunks, reshuffle=False))
            return created
        return CreateRanges().expand(pbegin, chunks)
