from beam_zdl.v1 import wal_pb2 as _wal_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    MODE_DIRECT: _ClassVar[Mode]
    MODE_WAL: _ClassVar[Mode]
MODE_UNSPECIFIED: Mode
MODE_DIRECT: Mode
MODE_WAL: Mode

class OffsetRange(_message.Message):
    __slots__ = ("topic", "partition", "start", "stop")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    start: int
    stop: int
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ..., start: _Optional[int] = ..., stop: _Optional[int] = ...) -> None: ...

class SegmentRef(_message.Message):
    __slots__ = ("uri", "size_bytes", "record_count", "spans")
    URI_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    RECORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    uri: str
    size_bytes: int
    record_count: int
    spans: _containers.RepeatedCompositeFieldContainer[_wal_pb2.PartitionSpan]
    def __init__(self, uri: _Optional[str] = ..., size_bytes: _Optional[int] = ..., record_count: _Optional[int] = ..., spans: _Optional[_Iterable[_Union[_wal_pb2.PartitionSpan, _Mapping]]] = ...) -> None: ...

class BatchPlan(_message.Message):
    __slots__ = ("batch_id", "mode", "ranges", "segments", "created_ms", "options_fingerprint", "epoch")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    mode: Mode
    ranges: _containers.RepeatedCompositeFieldContainer[OffsetRange]
    segments: _containers.RepeatedCompositeFieldContainer[SegmentRef]
    created_ms: int
    options_fingerprint: str
    epoch: int
    def __init__(self, batch_id: _Optional[int] = ..., mode: _Optional[_Union[Mode, str]] = ..., ranges: _Optional[_Iterable[_Union[OffsetRange, _Mapping]]] = ..., segments: _Optional[_Iterable[_Union[SegmentRef, _Mapping]]] = ..., created_ms: _Optional[int] = ..., options_fingerprint: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...

class Completion(_message.Message):
    __slots__ = ("batch_id", "completed_ms", "records", "epoch")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_MS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    completed_ms: int
    records: int
    epoch: int
    def __init__(self, batch_id: _Optional[int] = ..., completed_ms: _Optional[int] = ..., records: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...

class CheckpointConfig(_message.Message):
    __slots__ = ("format_version", "topics", "mode", "consumer_group", "wal_dir", "created_ms")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    WAL_DIR_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    topics: _containers.RepeatedScalarFieldContainer[str]
    mode: Mode
    consumer_group: str
    wal_dir: str
    created_ms: int
    def __init__(self, format_version: _Optional[int] = ..., topics: _Optional[_Iterable[str]] = ..., mode: _Optional[_Union[Mode, str]] = ..., consumer_group: _Optional[str] = ..., wal_dir: _Optional[str] = ..., created_ms: _Optional[int] = ...) -> None: ...
