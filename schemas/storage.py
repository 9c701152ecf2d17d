"""Where the workdir's stage data is kept when it is an object store (``workdir: s3://bucket/prefix``)."""
from __future__ import annotations

from pydantic import Field

from schemas.base import StrictModel, UrlWithSecret


class StorageConfig(StrictModel):
    endpoint_url: UrlWithSecret | None = Field(None, description=(
        "S3 endpoint for s3:// workdirs, sources and eval sets, e.g. http://127.0.0.1:9000 for MinIO; unset: "
        "AWS_ENDPOINT_URL from the environment, else AWS itself. Credentials always come from the environment "
        "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or an AWS profile), never from the config."))
    scratch_dir: str | None = Field(None, description=(
        "Local disk for a remote workdir: stage bodies write here before upload, remote stage outputs are "
        "mirrored here, and models, adapters and logs stay here. Unset: PEFTPIPE_SCRATCH, else a folder in "
        "the system's temporary directory."))
