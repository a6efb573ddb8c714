"""Slipstream: an S3-compatible caching proxy for AI/ML training data."""

__version__ = "0.1.0"
