"""The WAL directory's index: which segments it holds, and each one's ref (footer spans).

Segments are immutable, so a ref, once read, never changes: a :class:`SegmentIndex` caches
them. It is an object with an owner, not process state: the receiver keeps one (it
remembers what it seals, and reads the rest when partitions are assigned to it), the driver
another (it reads the refs of the segments it plans, and forgets the segments it deletes).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
from typing import Iterable, NamedTuple

from beam_zdl.errors import WalCorruptionError
from beam_zdl.storage import Storage, open_storage
from beam_zdl.v1 import checkpoint_pb2, wal_pb2
from beam_zdl.wal.format import MAGIC, RECORD_KIND, parse_segment_name
from beam_zdl.wal.reader import decode_segment, read_footer

__all__ = ["SegmentInfo", "SegmentIndex", "list_segments", "segment_refs"]

_LOGGER = logging.getLogger(__name__)


class SegmentInfo(NamedTuple):
    """A sealed segment found in a WAL directory."""
    name: str
    uri: str
    size_bytes: int
    epoch: int
    seq: int


def list_segments(wal_dir: str) -> list[SegmentInfo]:
    """The segments of a WAL directory, sorted by (epoch, seq); other objects are ignored.

    Args:
        wal_dir: the WAL directory URI.

    Returns:
        One :class:`SegmentInfo` per ``seg-*.wal`` object at the top of the directory.
    """
    storage = open_storage(wal_dir)
    out = []
    for info in storage.list("seg-"):
        parsed = parse_segment_name(info.name)
        if parsed and "/" not in info.name:
            out.append(SegmentInfo(info.name, storage.uri(info.name), info.size, *parsed))
    return sorted(out, key=lambda s: (s.epoch, s.seq))


class SegmentIndex:
    """The refs of WAL segments (size, record count, per-partition spans), cached.

    A stand-alone receiver seals for as long as it runs, so the cache keeps only the most
    recent ``max_refs`` refs (~1.3 KB each); a ref it no longer holds is read again from
    the segment's footer. Thread-safe.
    """

    def __init__(self, max_refs: int = 20_000) -> None:
        """An empty index.

        Args:
            max_refs: how many refs to keep (the oldest go first).

        Raises:
            ValueError: ``max_refs`` is not positive.
        """
        if max_refs <= 0:
            raise ValueError(f"SegmentIndex max_refs must be positive, got {max_refs}")
        self.max_refs = max_refs
        self._refs: collections.OrderedDict[str, checkpoint_pb2.SegmentRef] = \
            collections.OrderedDict()
        self._storages: dict[str, Storage] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._refs)

    def remember(self, ref: checkpoint_pb2.SegmentRef) -> None:
        """Cache the ref of a segment (a seal's, say); the oldest beyond ``max_refs`` go."""
        with self._lock:
            self._refs[ref.uri] = ref
            self._refs.move_to_end(ref.uri)
            while len(self._refs) > self.max_refs:
                self._refs.popitem(last=False)

    def forget(self, uris: Iterable[str]) -> None:
        """Drop deleted segments from the cache."""
        with self._lock:
            for uri in uris:
                self._refs.pop(uri, None)

    def refs(self, segments: list[SegmentInfo]) -> list[checkpoint_pb2.SegmentRef]:
        """A ref per segment, in order: cached, or from footers read in parallel (then cached).

        Raises:
            StorageError: a segment cannot be read.
        """
        with self._lock:
            found = {s.uri: self._refs[s.uri] for s in segments if s.uri in self._refs}
        missing = [s for s in segments if s.uri not in found]
        if missing:
            with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
                for ref in pool.map(self._load, missing):
                    self.remember(ref)
                    found[ref.uri] = ref
        return [found[s.uri] for s in segments]

    def _load(self, info: SegmentInfo) -> checkpoint_pb2.SegmentRef:
        root = info.uri.rpartition("/")[0] or "."
        with self._lock:
            storage = self._storages.get(root)
            if storage is None:
                storage = self._storages[root] = open_storage(root)
        return _load_ref(storage, info)


def segment_refs(segments: list[SegmentInfo],
                 index: SegmentIndex | None = None) -> list[checkpoint_pb2.SegmentRef]:
    """A :class:`SegmentRef` (size, record count, spans) per segment, footers read in parallel.

    Args:
        segments: from :func:`list_segments`.
        index: the caller's cache; None reads every footer.
    """
    return (index if index is not None else SegmentIndex()).refs(segments)


# A footer is ~25 bytes per partition: one tail read covers ~2,500 partitions; a larger
# footer (or a damaged tail) falls back to reading the whole segment.
_FOOTER_TAIL_BYTES = 64 * 1024


def _footer_by_range(storage: Storage, info: SegmentInfo) -> wal_pb2.SegmentFooter | None:
    """The footer from two ranged reads (magic, tail), or None when they do not show it."""
    if info.size_bytes <= _FOOTER_TAIL_BYTES + len(MAGIC):
        return None  # small: one whole read is as cheap
    magic = storage.read_range(info.name, 0, len(MAGIC))
    if magic not in RECORD_KIND:
        return None  # the whole read reports it
    tail_at = info.size_bytes - _FOOTER_TAIL_BYTES
    tail = storage.read_range(info.name, tail_at, _FOOTER_TAIL_BYTES)
    if len(tail) != _FOOTER_TAIL_BYTES:
        return None  # the size listed is not the size stored: the whole read decides
    try:
        # The magic in front so read_footer's checks apply unchanged to the tail.
        return read_footer(magic + tail, info.uri)
    except WalCorruptionError:
        return None


def _load_ref(storage: Storage, info: SegmentInfo) -> checkpoint_pb2.SegmentRef:
    """The ref of one segment: its footer by range, else from the whole segment."""
    footer = _footer_by_range(storage, info)
    if footer is not None:
        return checkpoint_pb2.SegmentRef(uri=info.uri, size_bytes=info.size_bytes,
                                         record_count=footer.record_count,
                                         spans=list(footer.spans))
    data = storage.read(info.name)
    try:
        footer = read_footer(data, info.uri)
        spans, count = list(footer.spans), footer.record_count
    except WalCorruptionError as exc:
        # The records may still be intact: take the spans from those that verify.
        _LOGGER.warning("%s; taking its offsets from the records that verify", exc)
        found: dict[tuple[str, int], list[int]] = {}
        count = 0
        for rec in decode_segment(data, info.uri, fail_on_data_loss=False):
            span = found.setdefault((rec.topic, rec.partition), [rec.offset, rec.offset])
            span[1] = rec.offset
            count += 1
        spans = [wal_pb2.PartitionSpan(topic=t, partition=p, first_offset=a, last_offset=b)
                 for (t, p), (a, b) in found.items()]
    return checkpoint_pb2.SegmentRef(uri=info.uri, size_bytes=len(data), record_count=count,
                                     spans=spans)
