"""moto's S3 protocol server on loopback for the object-storage tests (a real server, not a
mocked boto3), and a client for it. Registered as a pytest plugin in tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

# moto accepts any credentials; passing them explicitly keeps the host's AWS config out of it.
ACCESS_KEY = "testing-key"
SECRET_KEY = "testing-secret"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """URL of a moto S3 server of this test module (skips when moto is not installed)."""
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def s3_client(endpoint: str):
    """A boto3 S3 client of the moto server at ``endpoint``."""
    boto3 = pytest.importorskip("boto3")
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )
