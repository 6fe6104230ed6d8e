"""Shared fixtures: a real S3 (moto's server on 127.0.0.1, in-process) for the S3 tests.

The server is started the way s3fs's own tests start it (``ThreadedMotoServer``), once
per test process: with ``pytest -n auto`` every xdist worker has its own, on a free port.
Plain fsspec URLs (``s3://bucket/x``) reach it because the session sets
``AWS_ENDPOINT_URL_S3``, which botocore (and so s3fs through aiobotocore) honours, next to
fake credentials; everything is put back when the session ends. Nothing on the way is
mocked: requests go over HTTP to moto's S3 implementation.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of a moto S3 server on 127.0.0.1 that ``s3://`` URLs reach for this session."""
    from moto.server import ThreadedMotoServer

    _forget_s3_filesystems()  # none made before the endpoint is set may be reused
    with pytest.MonkeyPatch.context() as mp:
        # The server logs every request through werkzeug's logger; keep failures readable.
        werkzeug_log = logging.getLogger("werkzeug")
        mp.setattr(werkzeug_log, "level", logging.WARNING)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            # Fake credentials and no user configuration: never a real AWS account.
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
                mp.delenv(name, raising=False)
            mp.setenv("AWS_ACCESS_KEY_ID", "testing")
            mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
            mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
            mp.setenv("AWS_CONFIG_FILE", os.devnull)
            mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
            mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
            mp.delenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", raising=False)
            mp.delenv("AWS_ENDPOINT_URL", raising=False)
            mp.setenv("AWS_ENDPOINT_URL_S3", endpoint)
            yield endpoint
        finally:
            _forget_s3_filesystems()
            server.stop()
            # stop() shuts the serving loop down but leaves the listening socket open.
            if server._server is not None:
                server._server.server_close()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> Iterator[str]:
    """``s3://<fresh bucket>`` on the moto server; emptied and deleted afterwards.

    The s3fs instance is shared by the tests of a process (making a client costs
    0.1-0.4 s), but its listings cache is dropped before and after each test.
    """
    import fsspec.core

    bucket = f"hyperstate-{uuid.uuid4().hex[:20]}"
    fs, _ = fsspec.core.url_to_fs(f"s3://{bucket}")
    fs.invalidate_cache()
    # Fail early and clearly if s3:// does not reach the test server.
    assert fs.s3.meta.endpoint_url == s3_endpoint, fs.s3.meta.endpoint_url
    fs.call_s3("create_bucket", Bucket=bucket)
    yield f"s3://{bucket}"
    fs.invalidate_cache()
    fs.rm(bucket, recursive=True)
    fs.invalidate_cache()


def _forget_s3_filesystems() -> None:
    """Drop every cached s3fs instance (with its client and listings cache)."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
