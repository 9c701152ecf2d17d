"""A real S3-compatible server for tests: moto's server mode (its HTTP server on 127.0.0.1, a free port).

Clients reach it over HTTP through s3fs/botocore exactly as they would reach MinIO or AWS; nothing in boto
or fsspec is patched. Authentication is on: after the setup requests, the server checks every request's
signature against the access key of an IAM user it holds, so a wrong secret is refused as on AWS.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
       "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN", "AWS_PROFILE")
ALLOW_S3 = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


@dataclass
class S3Server:
    endpoint: str
    key_id: str
    secret: str

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.key_id,
                            aws_secret_access_key=self.secret, region_name="us-east-1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: bytes) -> None:
    urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST",
                                                  headers={"Content-Type": "text/plain"}), timeout=30).close()


def clear_clients() -> None:
    """Drop cached s3fs instances, so the next one reads the (changed) environment."""
    import s3fs
    s3fs.S3FileSystem.clear_instance_cache()


@contextmanager
def s3_server(buckets: tuple[str, ...] = ()) -> Iterator[S3Server]:
    """Start moto's threaded server with authentication, make an IAM user allowed s3:* and the ``buckets``,
    and point this process's AWS environment at it with the user's key (all restored on exit)."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (the dev extra)")
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request in the test output
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()  # returns once the server's socket is listening
    # moto keeps its state per process, not per server: start from nothing (an earlier server's user and
    # buckets would still be there). Then the next 3 requests (making the user, its key and its policy) are
    # not authenticated; every later one is.
    _post(f"{endpoint}/moto-api/reset", b"")
    _post(f"{endpoint}/moto-api/reset-auth", b"3")
    iam = boto3.client("iam", endpoint_url=endpoint, aws_access_key_id="setup", aws_secret_access_key="setup",
                       region_name="us-east-1")
    iam.create_user(UserName="peftpipe")
    key = iam.create_access_key(UserName="peftpipe")["AccessKey"]
    iam.put_user_policy(UserName="peftpipe", PolicyName="s3", PolicyDocument=json.dumps(ALLOW_S3))
    s3 = S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    for bucket in buckets:
        s3.client().create_bucket(Bucket=bucket)
    saved = {k: os.environ.get(k) for k in ENV}
    for k in ENV:
        os.environ.pop(k, None)
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": s3.key_id,
                       "AWS_SECRET_ACCESS_KEY": s3.secret, "AWS_DEFAULT_REGION": "us-east-1"})
    clear_clients()
    try:
        yield s3
    finally:
        _post(f"{endpoint}/moto-api/reset-auth", b"inf")  # authentication off again for this process
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        clear_clients()
