"""One aiohttp handler for every S3 request: authenticate, parse the target, and route by
method and target to the read handlers or the write handlers.

https://docs.aws.amazon.com/AmazonS3/latest/API/API_Operations_Amazon_Simple_Storage_Service.html
"""

from __future__ import annotations

from aiohttp import web

from proxy import errors
from proxy.model import valid_bucket_name
from proxy.routing import Mount, Router
from proxy.s3 import parse
from proxy.s3.auth import Authenticator, is_write
from proxy.s3.read_handlers import S3ReadHandlers
from proxy.s3.write_handlers import S3WriteHandlers

# subresource -> the operation it names (a metric label: names from this fixed table only)
_BUCKET_SUBRESOURCES_NOT_BUILT = {
    "acl": "GetBucketAcl",
    "policy": "GetBucketPolicy",
    "cors": "GetBucketCors",
    "lifecycle": "GetBucketLifecycle",
    "tagging": "GetBucketTagging",
    "website": "GetBucketWebsite",
    "logging": "GetBucketLogging",
    "notification": "GetBucketNotification",
    "replication": "GetBucketReplication",
    "encryption": "GetBucketEncryption",
    "object-lock": "GetBucketObjectLock",
    "uploads": "ListMultipartUploads",
    "versions": "GetBucketVersions",
    "requestPayment": "GetBucketRequestPayment",
    "accelerate": "GetBucketAccelerate",
    "analytics": "GetBucketAnalytics",
    "inventory": "GetBucketInventory",
    "metrics": "GetBucketMetrics",
    "intelligent-tiering": "GetBucketIntelligentTiering",
    "ownershipControls": "GetBucketOwnershipControls",
    "publicAccessBlock": "GetBucketPublicAccessBlock",
    "policyStatus": "GetBucketPolicyStatus",
}
_OBJECT_SUBRESOURCES_NOT_BUILT = {
    "acl",
    "tagging",
    "attributes",
    "torrent",
    "retention",
    "legal-hold",
    "uploads",
    "uploadId",
    "restore",
    "select",
    "versionId",
}


_WRITE_METHODS = frozenset({"PUT", "POST", "DELETE"})
_READ_OBJECT_OPS = {"GET": "GetObject", "HEAD": "HeadObject"}


class S3Dispatcher:
    def __init__(
        self,
        *,
        reads: S3ReadHandlers,
        writes: S3WriteHandlers,
        router: Router,
        auth: Authenticator,
        domains: tuple[str, ...],
    ) -> None:
        self.reads = reads
        self.writes = writes
        self.router = router
        self.auth = auth
        self.domains = domains

    async def dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        auth = request["auth"] = self.auth.authenticate(request)
        raw = request.raw_path
        target = parse.parse_target(raw, request.host or "", self.domains)
        qs = raw.partition("?")[2]
        query = auth.operation_query(parse.parse_query(qs)) if qs else {}
        method = request.method
        if target.bucket is None:
            if method == "GET":
                request["op"] = "ListBuckets"
                return await self.reads.list_buckets(request)
            raise errors.MethodNotAllowed()
        auth.require(target.bucket, is_write(method))  # before the bucket is resolved
        try:
            mount = self.router.resolve(target.bucket)
        except errors.NoSuchBucket:
            if method == "PUT" and target.key is None and not valid_bucket_name(target.bucket):
                request["op"] = "CreateBucket"
                raise errors.InvalidBucketName(bucketName=target.bucket) from None
            raise
        if target.key is None:
            return await self._bucket_op(request, method, mount, query)
        return await self._object_op(request, method, mount, target.key, query)

    async def _bucket_op(
        self, request: web.BaseRequest, method: str, mount: Mount, query: dict[str, str]
    ) -> web.StreamResponse:
        if method in _WRITE_METHODS or "uploads" in query:
            return await self.writes.bucket_op(request, method, mount, query)
        if method == "HEAD":
            request["op"] = "HeadBucket"
            return await self.reads.head_bucket(request, mount)
        if method != "GET":
            request["op"] = "UnknownBucketOperation"
            raise errors.NotImplementedS3(f"{method} on a bucket is not supported yet.")
        if "location" in query:
            request["op"] = "GetBucketLocation"
            return await self.reads.get_location(request, mount)
        if "versioning" in query:
            request["op"] = "GetBucketVersioning"
            return await self.reads.get_versioning(request, mount)
        unsupported = sorted(_BUCKET_SUBRESOURCES_NOT_BUILT.keys() & query.keys())
        if unsupported:
            request["op"] = _BUCKET_SUBRESOURCES_NOT_BUILT[unsupported[0]]
            raise errors.NotImplementedS3(f"?{unsupported[0]} is not supported.")
        if query.get("list-type") == "2":
            request["op"] = "ListObjectsV2"
            return await self.reads.list_v2(request, mount, query)
        request["op"] = "ListObjects"
        return await self.reads.list_v1(request, mount, query)

    async def _object_op(
        self, request: web.BaseRequest, method: str, mount: Mount, key: str, query: dict[str, str]
    ) -> web.StreamResponse:
        if method in _WRITE_METHODS or "uploadId" in query:
            return await self.writes.object_op(request, method, mount, key, query)
        request["op"] = _READ_OBJECT_OPS.get(method, "UnknownObjectOperation")
        if method not in ("GET", "HEAD"):
            raise errors.NotImplementedS3(f"{request['op']} is not supported yet (read-only).")
        unsupported = _OBJECT_SUBRESOURCES_NOT_BUILT.intersection(query)
        if unsupported and not (query.get("versionId") == "null" and len(unsupported) == 1):
            raise errors.NotImplementedS3(f"?{sorted(unsupported)[0]} is not supported.")
        remote_key = mount.remote_key(key)
        if method == "HEAD":
            return await self.reads.head_object(request, mount, remote_key, query)
        return await self.reads.get_object(request, mount, remote_key, query)
