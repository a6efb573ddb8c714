"""The S3 store: link.py (clients), http.py (GET/HEAD), reads.py, writes.py, uploads.py;
backend.py's S3Backend puts them together. Not imported here: codec.py is read by processes
that never build an S3 client (the cluster's chunk reads), and aiobotocore takes a second to
import."""
