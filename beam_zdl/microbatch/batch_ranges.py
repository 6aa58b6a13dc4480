"""How a micro-batch hands its planned ranges to ``ReadFromKafka`` (a :class:`RangesInput`).

On the run's warm runner (:mod:`beam_zdl.worker_pool`) the ranges travel as the
element of a :class:`~beam_zdl.worker_pool.PayloadImpulse`: runner data, not
stage content, so the read's stages are identical in every batch and their
bundle processors are reused. The FnApiRunner hands a splittable DoFn's input
to all its workers by itself, so no shuffle is added there; any other runner
(Flink, Dataflow) gets :class:`~beam_zdl.io.CreateRanges`.

Payload format (JSON, UTF-8), one list of chunks per group::

    [2, [[[topic, partition, start, stop], ...], ...]]

The first item is the format version; driver and workers must agree on it.
"""

from __future__ import annotations

import json

import apache_beam as beam

from beam_zdl.errors import ZdlError
from beam_zdl.direct import RangeGroup
from beam_zdl.io import CreateRanges, RangesInput
from beam_zdl.ranges import PartitionRange
from beam_zdl.worker_pool import PayloadImpulse, feeds_payload_impulses

__all__ = ["BatchRanges", "encode_groups", "decode_groups"]

_GROUPS_FORMAT = 2


def encode_groups(groups: list[RangeGroup]) -> bytes:
    """The groups of a read as the payload of its PayloadImpulse."""
    return json.dumps([_GROUPS_FORMAT, [[list(c) for c in g.ranges] for g in groups]]).encode()


def decode_groups(payload: bytes) -> list[RangeGroup]:
    """The groups :func:`encode_groups` encoded.

    Raises:
        ZdlError: the runner did not hand this read its ranges (an empty payload):
            reading nothing would lose a batch, so the batch fails and is replayed.
    """
    if not payload:
        raise ZdlError("ReadFromKafka: the runner did not hand this read its ranges (an empty "
                       "Impulse element): only beam_zdl's warm runner does; the batch fails "
                       "and is replayed from its recorded plan. Please report this as a bug.")
    version, groups = json.loads(payload)
    if version != _GROUPS_FORMAT:
        raise ZdlError(f"ReadFromKafka: ranges of format {version}, this version reads "
                       f"{_GROUPS_FORMAT}: driver and workers run different beam_zdl versions")
    return [RangeGroup(tuple(PartitionRange(str(t), int(p), int(a), int(b))
                             for t, p, a, b in chunks)) for chunks in groups]


class BatchRanges(RangesInput):
    """A micro-batch's ranges, as the runner of the batch takes them best."""

    def expand(self, pbegin: beam.pvalue.PBegin,
               groups: list[RangeGroup]) -> beam.PCollection[RangeGroup]:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner
        runner = pbegin.pipeline.runner
        if feeds_payload_impulses(runner):
            fed: beam.PCollection[RangeGroup] = (
                pbegin | "Ranges" >> PayloadImpulse(encode_groups(groups))
                | "Groups" >> beam.FlatMap(decode_groups).with_output_types(RangeGroup))
            return fed
        if isinstance(runner, FnApiRunner):
            # It runs an SDF's processing in a stage of its own and hands each worker a
            # share of its input: a Reshuffle would only add a stage (~0.1 s a batch).
            created: beam.PCollection[RangeGroup] = (
                pbegin | "Ranges" >> beam.Create(groups, reshuffle=False))
            return created
        return CreateRanges().expand(pbegin, groups)
