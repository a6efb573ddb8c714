"""The S3 protocol: request parsing, XML, handlers, error middleware."""
