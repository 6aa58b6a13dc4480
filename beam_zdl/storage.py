"""Durable storage by URI: local paths / ``file://``, ``gs://`` and ``hdfs://``.

One small interface, :class:`Storage`, rooted at a base URI. Every backend
offers the same four operations with the same guarantees:

* ``create(name, data)`` — create-once: raises :class:`ObjectExistsError` when
  ``name`` already exists. Readers never see a partial object (local and HDFS
  write a temporary file and rename it; local fsyncs file and folder; GCS
  uploads in one request with ``if_generation_match=0``).
* ``read(name)``, ``exists(name)``, ``list(prefix)`` (sorted by name, no
  temporary files), ``delete(name)`` (a missing object is not an error).

``open_storage(uri)`` picks the backend from the scheme:

* a local path or ``file://`` → :class:`LocalStorage`;
* ``gs://bucket/prefix`` → :class:`GcsStorage` (google-cloud-storage; honours
  ``STORAGE_EMULATOR_HOST``). Beam's own gcsio is not used: its rename and
  delete go through the GCS batch API, which the emulator rejects.
* ``hdfs://host:port/path`` → :class:`HdfsStorage` over WebHDFS. By project
  convention ``host:port`` is the NameNode's HTTP (WebHDFS) address, not its
  RPC port; the user is ``$HADOOP_USER_NAME``, else ``$USER``, else ``root``.

Transient failures (connection errors, 5xx, 429) are retried with backoff;
what still fails raises :class:`StorageError` naming the URI.
"""

from __future__ import annotations

import logging
import os
import posixpath
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Protocol, TypeVar
from urllib.parse import urlparse

import requests

from beam_zdl.errors import ObjectExistsError, StorageError

_T = TypeVar("_T")

__all__ = ["ObjectInfo", "Storage", "LocalStorage", "GcsStorage", "HdfsStorage",
           "open_storage", "join"]

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its name relative to the storage root, and its size."""
    name: str
    size: int


class Storage(Protocol):
    """Create-once object storage rooted at ``root_uri``; names use ``/``."""

    root_uri: str

    def create(self, name: str, data: bytes | bytearray) -> None:
        """Write ``data`` under ``name`` unless it exists (``ObjectExistsError``).

        A bytearray is written as is (the WAL writer builds segments in one; copying a
        16 MiB segment at every seal would hold it twice).
        """
        ...

    def read(self, name: str) -> bytes: ...

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from byte ``offset`` (fewer at the object's end).

        One ranged request: a segment's footer is read without downloading the
        segment.
        """
        ...

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

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root_uri = str(self.root)

    def uri(self, name: str) -> str:
        return str(self.root / name)

    def create(self, name: str, data: bytes | bytearray) -> None:
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

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        _check_range(offset, length)
        try:
            with open(self.root / name, "rb") as f:
                f.seek(offset)
                return f.read(length)
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


def _check_range(offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise ValueError(f"read_range needs offset >= 0 and length >= 0, got offset={offset}, "
                         f"length={length}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_temp(name: str) -> bool:
    """Whether a base name is a hidden or temporary file, never listed."""
    return name.startswith(".")


def _temp_name(name: str) -> str:
    return f".{name}.{uuid.uuid4().hex}.tmp"


# -- GCS -------------------------------------------------------------------


class GcsStorage:
    """Objects under ``gs://bucket/prefix``, with google-cloud-storage.

    Create-once is one upload with ``if_generation_match=0`` (a single
    request up to 8 MiB, a resumable upload above): GCS (and the emulator)
    accept it only if no live object has that name, and the object appears
    whole when the upload completes, so of two racing writers exactly one
    wins and the other gets HTTP 412.

    Retries use the library's ``DEFAULT_RETRY`` (connection errors, 408, 429,
    5xx, with exponential backoff). The library retries an upload only when a
    generation precondition is given, because a blind re-upload could
    overwrite; ours always carries ``if_generation_match=0``, so a retry can
    never replace anything. A retry can meet *its own* first attempt, though:
    when the first upload landed but its response was lost, the retry gets
    412. So after a 412, if an attempt was retried, we read the object back,
    and bytes equal to ours mean the write was ours (success); otherwise it
    is :class:`ObjectExistsError`. (Another writer's byte-identical object
    would pass too; create-once payloads name their writer, so it cannot
    come from a rival.)

    Args:
        root_uri: ``gs://bucket`` or ``gs://bucket/prefix``.
        client: a ``google.cloud.storage.Client``; by default one is made on
            first use (``STORAGE_EMULATOR_HOST`` selects the emulator).
    """

    def __init__(self, root_uri: str, client: Any = None) -> None:
        parsed = urlparse(root_uri)
        if parsed.scheme != "gs" or not parsed.netloc:
            raise StorageError(f"bad GCS URI {root_uri!r}: expected gs://bucket[/prefix]")
        self.root_uri = root_uri.rstrip("/")
        self.bucket_name = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self._client = client
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # Clients hold sessions and locks: a pickled storage (say in a DoFn)
        # makes its own client where it is used.
        state = self.__dict__.copy()
        state["_client"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def uri(self, name: str) -> str:
        return join(self.root_uri, name)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _client_(self) -> Any:
        with self._lock:
            if self._client is None:
                import google.cloud.storage as storage
                self._client = storage.Client()
            return self._client

    def _blob(self, name: str) -> Any:
        return self._client_().bucket(self.bucket_name).blob(self._key(name))

    def create(self, name: str, data: bytes | bytearray) -> None:
        from google.api_core import exceptions
        from google.cloud.storage.retry import DEFAULT_RETRY

        import beam_zdl.compat as compat

        retried = False
        # The library's own test of "transient"; we wrap it to learn whether
        # an attempt was retried (see the class docstring).
        transient = compat.gcs_transient_predicate()

        def predicate(exc: Exception) -> bool:
            nonlocal retried
            if transient(exc):
                retried = True
                _LOGGER.warning("retrying the upload of %s after: %s", self.uri(name), exc)
                return True
            return False

        blob = self._blob(name)
        data = bytes(data)  # upload_from_string takes bytes only; a bytearray is copied once
        try:
            blob.upload_from_string(
                data, content_type="application/octet-stream", if_generation_match=0,
                retry=DEFAULT_RETRY.with_predicate(predicate))
        except exceptions.PreconditionFailed:
            if retried and self._holds(name, data):
                _LOGGER.info("%s: an earlier attempt of this upload had landed", self.uri(name))
                return
            raise ObjectExistsError(
                f"{self.uri(name)} already exists; create-once writes never overwrite "
                "(another writer got there first, or this object was already written)"
            ) from None
        except Exception as err:
            raise self._error("create", name, err) from err

    def _holds(self, name: str, data: bytes | bytearray) -> bool:
        try:
            return self.read(name) == data
        except StorageError:
            return False

    def read(self, name: str) -> bytes:
        from google.api_core import exceptions
        from google.cloud.storage.retry import DEFAULT_RETRY
        try:
            data: bytes = self._blob(name).download_as_bytes(retry=DEFAULT_RETRY)
            return data
        except exceptions.NotFound:
            raise StorageError(f"{self.uri(name)} does not exist (or its bucket "
                               f"gs://{self.bucket_name} does not)") from None
        except Exception as err:
            raise self._error("read", name, err) from err

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        from google.api_core import exceptions
        from google.cloud.storage.retry import DEFAULT_RETRY
        _check_range(offset, length)
        if length == 0:
            return b""
        try:
            # end is inclusive; a range past the object's end answers what there is.
            data: bytes = self._blob(name).download_as_bytes(
                start=offset, end=offset + length - 1, retry=DEFAULT_RETRY)
            return data
        except exceptions.NotFound:
            raise StorageError(f"{self.uri(name)} does not exist (or its bucket "
                               f"gs://{self.bucket_name} does not)") from None
        except exceptions.RequestRangeNotSatisfiable:
            return b""  # offset at or past the end
        except Exception as err:
            raise self._error("read", name, err) from err

    def exists(self, name: str) -> bool:
        from google.cloud.storage.retry import DEFAULT_RETRY
        try:
            found: bool = self._blob(name).exists(retry=DEFAULT_RETRY)
            return found
        except Exception as err:
            raise self._error("check", name, err) from err

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        from google.api_core import exceptions
        from google.cloud.storage.retry import DEFAULT_RETRY
        base = f"{self.prefix}/" if self.prefix else ""
        try:
            blobs = self._client_().list_blobs(self.bucket_name, prefix=base + prefix,
                                               retry=DEFAULT_RETRY)
            out = []
            for blob in blobs:
                rel = blob.name[len(base):]
                if rel and not rel.endswith("/") and not _is_temp(posixpath.basename(rel)):
                    out.append(ObjectInfo(rel, int(blob.size or 0)))
        except exceptions.NotFound:
            raise StorageError(
                f"cannot list {self.uri(prefix)}: bucket gs://{self.bucket_name} does not "
                "exist; create it or fix the URI") from None
        except Exception as err:
            raise self._error("list", prefix, err) from err
        return sorted(out, key=lambda o: o.name)

    def delete(self, name: str) -> None:
        from google.api_core import exceptions
        from google.cloud.storage.retry import DEFAULT_RETRY
        try:
            # Deleting is idempotent here (a missing object is fine), so a
            # retried delete is safe without a generation precondition.
            self._blob(name).delete(retry=DEFAULT_RETRY)
        except exceptions.NotFound:
            pass
        except Exception as err:
            raise self._error("delete", name, err) from err

    def _error(self, what: str, name: str, err: Exception) -> StorageError:
        from google.api_core import exceptions
        hint = "check the URI, the bucket and the network"
        if isinstance(err, exceptions.NotFound):
            hint = f"does bucket gs://{self.bucket_name} exist? Create it or fix the URI"
        elif isinstance(err, (exceptions.Forbidden, exceptions.Unauthorized)):
            hint = ("check the credentials (GOOGLE_APPLICATION_CREDENTIALS or "
                    "`gcloud auth application-default login`) and the bucket's IAM")
        return StorageError(f"cannot {what} {self.uri(name)}: {_gcs_detail(err)}; {hint}")


def _gcs_detail(err: Exception) -> str:
    """A one-line account of a google-cloud-storage error."""
    code = getattr(err, "code", None)
    errors = getattr(err, "errors", None) or []
    if code is not None and errors and isinstance(errors[0], dict):
        return f"HTTP {code} {errors[0].get('message', '')}".strip()
    if code is not None:  # the full response is in the chained cause
        return f"HTTP {code} {type(err).__name__}"
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}"


# -- HDFS (WebHDFS) ----------------------------------------------------------

_RETRIABLE_REMOTE = ("RetriableException", "StandbyException", "SafeModeException")


class _HdfsHttpError(Exception):
    """A WebHDFS answer that is not a success; carries the server's message."""

    def __init__(self, status: int, exception: str, message: str) -> None:
        super().__init__(f"HTTP {status} {exception}: {message}")
        self.status = status
        self.exception = exception
        self.message = message


class HdfsStorage:
    """Files under ``hdfs://host:port/path``, over the WebHDFS REST API.

    ``host:port`` is the NameNode's HTTP address (project convention). A
    create writes a hidden temporary file next to the target
    (``op=CREATE&overwrite=false``, following the NameNode's 307 redirect to
    the DataNode by hand, as WebHDFS asks) and renames it onto the final name.
    HDFS's rename refuses an existing target (``{"boolean": false}``), which
    makes the create atomic and create-once: readers never see a partial file,
    and of two racing writers exactly one wins.

    Connection errors, 5xx and the NameNode's retriable exceptions (safe mode,
    standby) are retried a few times with backoff.

    Args:
        root_uri: ``hdfs://host:port`` or ``hdfs://host:port/path``.
        user: the HDFS user (``user.name``); default ``$HADOOP_USER_NAME``,
            else ``$USER``, else ``root``.
        attempts: how many times a transient failure is tried in all.
    """

    def __init__(self, root_uri: str, user: str | None = None, attempts: int = 5) -> None:
        parsed = urlparse(root_uri)
        if parsed.scheme != "hdfs" or not parsed.hostname or not parsed.port:
            raise StorageError(
                f"bad HDFS URI {root_uri!r}: expected hdfs://host:port[/path], where "
                "host:port is the NameNode's HTTP (WebHDFS) address, e.g. hdfs://namenode:9870/zdl")
        self.root_uri = root_uri.rstrip("/")
        self.root_path = "/" + parsed.path.strip("/")
        self.base_url = f"http://{parsed.hostname}:{parsed.port}/webhdfs/v1"
        self.user = user or os.environ.get("HADOOP_USER_NAME") or os.environ.get("USER") or "root"
        self.attempts = attempts
        self._session: requests.Session | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None
        return state

    def uri(self, name: str) -> str:
        return join(self.root_uri, name)

    def _path(self, name: str) -> str:
        return posixpath.join(self.root_path, name.strip("/")) if name else self.root_path

    def _uri_of(self, path: str) -> str:
        parsed = urlparse(self.root_uri)
        return f"hdfs://{parsed.netloc}{path}"

    # -- operations --------------------------------------------------------

    def create(self, name: str, data: bytes | bytearray) -> None:
        target = self._path(name)
        data = bytes(data)  # requests' typed API takes bytes; a bytearray is copied once
        if self._status(target) is not None:
            raise self._exists_error(name)
        parent, base = posixpath.split(target)
        tmp = posixpath.join(parent, _temp_name(base))
        tries = 0
        renamed = False

        def write() -> None:
            nonlocal tries
            tries += 1
            # The temp name is ours alone: a retry may replace a partial temp
            # file that a failed attempt left behind.
            self._write_new(tmp, data, overwrite=tries > 1)

        try:
            self._retrying(f"write {self._uri_of(tmp)}", write)
            renamed = self._retrying(
                f"rename {self._uri_of(tmp)} to {self.uri(name)}",
                lambda: self._call("PUT", tmp, "RENAME", destination=target).json()["boolean"])
            if not renamed:
                if self._status(tmp) is None and self.exists(name) and self.read(name) == data:
                    # Our temp file is gone and the target holds our bytes: an
                    # earlier, retried rename attempt had succeeded.
                    return
                raise self._exists_error(name)
        except _HdfsHttpError as err:
            raise self._error("create", name, err) from None
        finally:
            if not renamed:
                self._delete_quietly(tmp)

    def read(self, name: str) -> bytes:
        path = self._path(name)
        try:
            return self._retrying(f"read {self.uri(name)}",
                                  lambda: self._call("GET", path, "OPEN",
                                                     allow_redirects=True).content)
        except _HdfsHttpError as err:
            if err.exception == "FileNotFoundException" or err.status == 404:
                raise StorageError(f"{self.uri(name)} does not exist") from None
            raise self._error("read", name, err) from None

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        _check_range(offset, length)
        if length == 0:
            return b""
        path = self._path(name)
        try:
            return self._retrying(f"read {self.uri(name)}", lambda: self._call(
                "GET", path, "OPEN", allow_redirects=True, offset=str(offset),
                length=str(length)).content)
        except _HdfsHttpError as err:
            if err.exception == "FileNotFoundException" or err.status == 404:
                raise StorageError(f"{self.uri(name)} does not exist") from None
            if "offset" in err.message.lower() and offset > 0:
                return b""  # offset past the end of the file
            raise self._error("read", name, err) from None

    def exists(self, name: str) -> bool:
        return self._status(self._path(name)) is not None

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        out: list[ObjectInfo] = []
        pending = [""]
        while pending:
            rel_dir = pending.pop()
            entries = self._list_dir(self._path(rel_dir))
            for entry in entries:
                base = entry["pathSuffix"]
                if _is_temp(base):
                    continue
                rel = f"{rel_dir}/{base}" if rel_dir else base
                if entry["type"] == "DIRECTORY":
                    # Descend only where names can still start with the prefix.
                    if (rel + "/").startswith(prefix) or prefix.startswith(rel + "/"):
                        pending.append(rel)
                elif rel.startswith(prefix):
                    out.append(ObjectInfo(rel, int(entry["length"])))
        return sorted(out, key=lambda o: o.name)

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            self._retrying(f"delete {self.uri(name)}",
                           lambda: self._call("DELETE", path, "DELETE", recursive="false"))
        except _HdfsHttpError as err:
            raise self._error("delete", name, err) from None

    # -- internals ---------------------------------------------------------

    def _write_new(self, path: str, data: bytes, overwrite: bool = False) -> None:
        """One CREATE: the NameNode's 307 redirect, then the write to the DataNode."""
        redirect = self._call("PUT", path, "CREATE", overwrite=str(overwrite).lower())
        location = redirect.headers.get("Location")
        if redirect.status_code != 307 or not location:
            raise StorageError(
                f"WebHDFS at {self.base_url} answered CREATE {self._uri_of(path)} with HTTP "
                f"{redirect.status_code} and no redirect to a DataNode; is this a NameNode's "
                "HTTP address?")
        resp = self._session_().put(location, data=data, timeout=(10, 120),
                                    headers={"Content-Type": "application/octet-stream"})
        _check(resp)

    def _status(self, path: str) -> dict[str, Any] | None:
        """The FileStatus of ``path``, or None if it does not exist."""
        try:
            resp = self._retrying(f"check {self._uri_of(path)}",
                                  lambda: self._call("GET", path, "GETFILESTATUS"))
        except _HdfsHttpError as err:
            if err.status == 404 or err.exception == "FileNotFoundException":
                return None
            raise self._error_at("check", path, err) from None
        status: dict[str, Any] = resp.json()["FileStatus"]
        return status

    # typing.List: in this class body `list` is the method above.
    def _list_dir(self, path: str) -> List[dict[str, Any]]:
        try:
            resp = self._retrying(f"list {self._uri_of(path)}",
                                  lambda: self._call("GET", path, "LISTSTATUS"))
        except _HdfsHttpError as err:
            if err.status == 404 or err.exception == "FileNotFoundException":
                return []
            raise self._error_at("list", path, err) from None
        statuses: List[dict[str, Any]] = resp.json()["FileStatuses"]["FileStatus"]
        return statuses

    def _delete_quietly(self, path: str) -> None:
        try:
            self._call("DELETE", path, "DELETE", recursive="false")
        except Exception as err:  # a leftover temp file is hidden and harmless
            _LOGGER.warning("could not delete temporary file %s: %s", self._uri_of(path), err)

    def _session_(self) -> requests.Session:
        if self._session is None:
            self._session = requests.Session()
        return self._session

    def _call(self, method: str, path: str, op: str, allow_redirects: bool = False,
              **params: str) -> requests.Response:
        """One WebHDFS request; raises _HdfsHttpError on a non-success answer."""
        resp = self._session_().request(
            method, self.base_url + path,
            params={"op": op, "user.name": self.user, **params},
            allow_redirects=allow_redirects, timeout=(10, 120))
        if resp.status_code == 307 and not allow_redirects:
            return resp
        _check(resp)
        return resp

    def _retrying(self, what: str, fn: Callable[[], _T]) -> _T:
        """Run ``fn``, retrying connection errors, 5xx and retriable exceptions."""
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except (requests.ConnectionError, requests.Timeout, _HdfsHttpError) as err:
                transient = (not isinstance(err, _HdfsHttpError) or err.status >= 500
                             or err.exception in _RETRIABLE_REMOTE)
                if not transient:
                    raise
                if attempt == self.attempts:
                    if isinstance(err, _HdfsHttpError):
                        raise
                    raise StorageError(
                        f"cannot {what}: WebHDFS at {self.base_url} unreachable after "
                        f"{attempt} attempts ({err}); is the NameNode up, and is the URI's "
                        "host:port its HTTP address?") from None
                delay = min(0.2 * 2 ** (attempt - 1), 3.0)
                _LOGGER.warning("%s failed (attempt %d of %d), retrying in %.1f s: %s",
                                what, attempt, self.attempts, delay, err)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _exists_error(self, name: str) -> ObjectExistsError:
        return ObjectExistsError(
            f"{self.uri(name)} already exists; create-once writes never overwrite "
            "(another writer got there first, or this object was already written)")

    def _error(self, what: str, name: str, err: _HdfsHttpError) -> StorageError:
        return self._error_at(what, self._path(name), err)

    def _error_at(self, what: str, path: str, err: _HdfsHttpError) -> StorageError:
        hint = "check the URI and the HDFS cluster"
        if err.exception in ("AccessControlException", "SecurityException"):
            hint = (f"user {self.user!r} lacks permission: set $HADOOP_USER_NAME or fix "
                    "the folder's permissions")
        kind = err.exception or f"HTTP {err.status}"
        return StorageError(f"cannot {what} {self._uri_of(path)}: {kind}: {err.message}; {hint}")


def _check(resp: requests.Response) -> None:
    """Raise _HdfsHttpError with the server's RemoteException for a failed answer."""
    if resp.status_code < 300:
        return
    exception, message = "", resp.text[:500]
    try:
        remote = resp.json()["RemoteException"]
        exception, message = remote.get("exception", ""), remote.get("message", "")
    except (ValueError, KeyError, TypeError):
        pass
    raise _HdfsHttpError(resp.status_code, exception, message)


# -- dispatch ----------------------------------------------------------------


def open_storage(uri: str) -> Storage:
    """The storage for ``uri``: a local path, ``file://``, ``gs://`` or ``hdfs://``.

    Raises:
        StorageError: the scheme is not supported, or the URI is malformed.
    """
    scheme = urlparse(uri).scheme
    if scheme in ("", "file"):
        return LocalStorage(uri[len("file://"):] if scheme == "file" else uri)
    if scheme == "gs":
        return GcsStorage(uri)
    if scheme == "hdfs":
        return HdfsStorage(uri)
    raise StorageError(
        f"unsupported storage URI {uri!r}: use a local path, file://, gs:// or hdfs://")
