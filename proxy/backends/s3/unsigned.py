"""Streaming uploads: botocore signs the payload's SHA-256 over plain HTTP, which would need
the whole body first; PutObject and UploadPart are signed with UNSIGNED-PAYLOAD instead
(allowed by SigV4 for S3), so a body goes to the store as it arrives."""

from __future__ import annotations

from typing import Any

import botocore.auth

_UNSIGNED_SIGNER = "slipstream-s3v4-unsigned-payload"
_STREAMING_OPERATIONS = ("PutObject", "UploadPart")


class _UnsignedPayloadAuth(botocore.auth.S3SigV4Auth):  # type: ignore[misc]
    def _should_sha256_sign_payload(self, request: Any) -> bool:
        return False


botocore.auth.AUTH_TYPE_MAPS[_UNSIGNED_SIGNER] = _UnsignedPayloadAuth


def stream_uploads(client: Any) -> None:
    """Have ``client`` sign its streaming operations with UNSIGNED-PAYLOAD."""

    def choose(**_: Any) -> str:
        return _UNSIGNED_SIGNER

    for op in _STREAMING_OPERATIONS:
        client.meta.events.register(f"choose-signer.s3.{op}", choose)
