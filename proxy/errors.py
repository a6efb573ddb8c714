"""One exception tree: ``ProxyError`` is its root.

- ``S3Error`` is the client-facing branch, one class per S3 error code, rendered by the S3
  middleware as S3's XML error body.
  https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html#ErrorCodeList
- ``InternalFault`` is the internal branch: conditions the core handles itself (the index is
  full, the object changed during a fill) and that never reach a client as such.
- ``ConfigError`` and ``ListenError`` stop the server at start.

Adapters (backends, the cache) translate their library's exceptions into this tree once, at
their boundary (``raise ... from exc``), so callers catch ``ProxyError`` or one branch of it.
"""

from __future__ import annotations


class ProxyError(Exception):
    """The root of every exception Slipstream raises on purpose."""


class S3Error(ProxyError):
    code = "InternalError"
    status = 500
    message = "We encountered an internal error. Please try again."

    def __init__(self, message: str | None = None, **fields: str) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.fields = fields


class NoSuchBucket(S3Error):
    code, status, message = "NoSuchBucket", 404, "The specified bucket does not exist."


class NoSuchKey(S3Error):
    code, status, message = "NoSuchKey", 404, "The specified key does not exist."


class InvalidRange(S3Error):
    code, status, message = "InvalidRange", 416, "The requested range is not satisfiable."


class InvalidCopyRange(S3Error):
    """x-amz-copy-source-range beyond the source: 400, where a GET's InvalidRange is 416."""

    code, status = "InvalidRange", 400
    message = "The specified copy source range is not valid for the source object."


class InvalidPartNumber(S3Error):
    code, status, message = "InvalidPartNumber", 416, "The requested partnumber is not satisfiable"


class RequestTimeout(S3Error):
    code, status = "RequestTimeout", 400
    message = (
        "Your socket connection to the server was not read from or written to within "
        "the timeout period. Idle connections will be closed."
    )


class PreconditionFailed(S3Error):
    code, status = "PreconditionFailed", 412
    message = "At least one of the pre-conditions you specified did not hold."


class NotModified(S3Error):
    code, status, message = "NotModified", 304, "Not Modified"


class InvalidArgument(S3Error):
    code, status, message = "InvalidArgument", 400, "Invalid Argument"


class InvalidRequest(S3Error):
    code, status, message = "InvalidRequest", 400, "Invalid Request"


class InvalidBucketName(S3Error):
    code, status, message = "InvalidBucketName", 400, "The specified bucket is not valid."


class KeyTooLong(S3Error):
    code, status, message = "KeyTooLongError", 400, "Your key is too long."


class BucketNotEmpty(S3Error):
    code, status, message = "BucketNotEmpty", 409, "The bucket you tried to delete is not empty."


class BucketAlreadyOwnedByYou(S3Error):
    code, status = "BucketAlreadyOwnedByYou", 409
    message = "The bucket you tried to create already exists, and you own it."


class NoSuchUpload(S3Error):
    code, status = "NoSuchUpload", 404
    message = "The specified multipart upload does not exist."


class InvalidPart(S3Error):
    code, status = "InvalidPart", 400
    message = "One or more of the specified parts could not be found."


class InvalidPartOrder(S3Error):
    code, status = "InvalidPartOrder", 400
    message = "The list of parts was not in ascending order."


class EntityTooSmall(S3Error):
    code, status = "EntityTooSmall", 400
    message = "Your proposed upload is smaller than the minimum allowed object size."


class BadDigest(S3Error):
    code, status = "BadDigest", 400
    message = "The Content-MD5 or checksum you specified did not match what we received."


class MalformedXML(S3Error):
    code, status = "MalformedXML", 400
    message = "The XML you provided was not well-formed or did not validate."


class IncompleteBody(S3Error):
    code, status = "IncompleteBody", 400
    message = "You did not provide the number of bytes specified by the Content-Length."


class MissingContentLength(S3Error):
    code, status, message = "MissingContentLength", 411, "You must provide the Content-Length."


class AccessDenied(S3Error):
    code, status, message = "AccessDenied", 403, "Access Denied"


class SignatureDoesNotMatch(S3Error):
    code, status = "SignatureDoesNotMatch", 403
    message = (
        "The request signature we calculated does not match the signature you provided. "
        "Check your key and signing method."
    )


class InvalidAccessKeyId(S3Error):
    code, status = "InvalidAccessKeyId", 403
    message = "The AWS Access Key Id you provided does not exist in our records."


class RequestTimeTooSkewed(S3Error):
    code, status = "RequestTimeTooSkewed", 403
    message = "The difference between the request time and the current time is too large."


class AuthorizationHeaderMalformed(S3Error):
    code, status = "AuthorizationHeaderMalformed", 400
    message = "The authorization header is malformed."


class AuthorizationQueryParametersError(S3Error):
    code, status = "AuthorizationQueryParametersError", 400
    message = "The authorization query parameters are malformed."


class XAmzContentSHA256Mismatch(S3Error):
    code, status = "XAmzContentSHA256Mismatch", 400
    message = "The provided 'x-amz-content-sha256' header does not match what was computed."


class InvalidDigest(S3Error):
    code, status, message = "InvalidDigest", 400, "The Content-MD5 you specified is not valid."


class MethodNotAllowed(S3Error):
    code, status = "MethodNotAllowed", 405
    message = "The specified method is not allowed against this resource."


class NotImplementedS3(S3Error):
    code, status = "NotImplemented", 501
    message = "A header or operation you provided implies functionality that is not implemented."


class ServiceUnavailable(S3Error):
    code, status, message = "ServiceUnavailable", 503, "Please reduce your request rate."


class SlowDown(S3Error):
    code, status, message = "SlowDown", 503, "Please reduce your request rate."


class InternalError(S3Error):
    pass


class ConfigError(ProxyError):
    """The configuration is invalid; the message names the file and the field."""


class ListenError(ProxyError):
    """A listener cannot bind its address (in use, not on this host, unknown name); stops the
    server at start. The message names the address and its config field."""


class CacheTooNew(ProxyError):
    """cache.dir holds an index in a record format newer than this version reads; stops the
    server at start (the message says what to do)."""


class InternalFault(ProxyError):
    """An internal condition the core handles; never shown to a client as such."""


class IndexFull(InternalFault):
    """The LMDB map, or the disk under it, is full; the write was not made (the read is served
    from the store without caching)."""

    def __init__(self, reason: str = "index_full") -> None:
        super().__init__(reason)
        self.reason = reason


class BackendUnavailable(ServiceUnavailable):
    """The backing store could not be reached or answered 5xx."""


class ObjectChanged(InternalFault):
    """The object changed in the store while we were filling it (ETag moved)."""


def by_code(code: str) -> type[S3Error] | None:
    """The S3Error class for an S3 error code, e.g. "BucketNotEmpty"."""
    stack: list[type[S3Error]] = [S3Error]
    while stack:
        cls = stack.pop()
        if cls.__dict__.get("code") == code:
            return cls
        stack.extend(cls.__subclasses__())
    return None
