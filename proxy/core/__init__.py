"""The read/write core: what the S3 layer asks for, answered from the cache and the stores.

``metadata`` (lookup, freshness, revalidation), ``reads`` (conditionals, range -> parts: the
read planner), ``fills`` (one store fetch per chunk across tasks and processes; verify;
persist), ``writes`` (write-through), ``listing`` (prefix stripping, ListBuckets). The values
a read answers with live in ``body``; ``conditions`` holds the HTTP preconditions.
"""
