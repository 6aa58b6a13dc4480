"""The storage harnesses serve the real semantics our create-once relies on.

Raw clients only (no beam_zdl.storage): if the GCS emulator ignored
``if_generation_match=0`` or WebHDFS overwrote without ``overwrite=true``,
every create-once test above them would prove nothing.
"""

from __future__ import annotations

import uuid

import pytest
import requests
from google.api_core.exceptions import PreconditionFailed


def test_gcs_emulator_enforces_generation_precondition(gcs, gcs_bucket):
    client = gcs.client()
    name = f"harness/{uuid.uuid4().hex}"
    client.bucket(gcs_bucket).blob(name).upload_from_string(b"first", if_generation_match=0)

    with pytest.raises(PreconditionFailed):
        client.bucket(gcs_bucket).blob(name).upload_from_string(
            b"second", if_generation_match=0)

    assert client.bucket(gcs_bucket).blob(name).download_as_bytes() == b"first"


def test_gcs_emulator_env_points_default_clients_at_it(gcs, gcs_bucket):
    import os

    from google.cloud import storage

    assert os.environ["STORAGE_EMULATOR_HOST"] == gcs.endpoint
    name = f"harness/{uuid.uuid4().hex}"
    storage.Client().bucket(gcs_bucket).blob(name).upload_from_string(b"x")
    assert gcs.client().bucket(gcs_bucket).blob(name).exists()


def _webhdfs_create(hdfs, path: str, data: bytes) -> requests.Response:
    url = f"{hdfs.webhdfs_url}/webhdfs/v1{path}"
    params = {"op": "CREATE", "overwrite": "false", "user.name": "root"}
    redirect = requests.put(url, params=params, allow_redirects=False, timeout=30)
    assert redirect.status_code == 307, redirect.text
    return requests.put(redirect.headers["Location"], data=data, timeout=30)


def test_webhdfs_create_without_overwrite_refuses_existing_file(hdfs):
    path = f"/harness/{uuid.uuid4().hex}"
    first = _webhdfs_create(hdfs, path, b"first")
    assert first.status_code == 201, first.text

    second = _webhdfs_create(hdfs, path, b"second")
    assert second.status_code >= 400
    assert second.json()["RemoteException"]["exception"] == "FileAlreadyExistsException"

    read = requests.get(f"{hdfs.webhdfs_url}/webhdfs/v1{path}",
                        params={"op": "OPEN", "user.name": "root"}, timeout=30)
    assert read.content == b"first"


def test_webhdfs_rename_onto_existing_file_is_refused(hdfs):
    base = f"/harness/{uuid.uuid4().hex}"
    assert _webhdfs_create(hdfs, base + "/a", b"a").status_code == 201
    assert _webhdfs_create(hdfs, base + "/b", b"b").status_code == 201

    resp = requests.put(f"{hdfs.webhdfs_url}/webhdfs/v1{base}/a",
                        params={"op": "RENAME", "destination": base + "/b",
                                "user.name": "root"}, timeout=30)
    assert resp.status_code == 200
    assert resp.json() == {"boolean": False}
