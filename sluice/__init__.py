"""Sluice: a file dropped into a bucket becomes a validated, trained, benchmarked and promoted model."""

__version__ = "0.1.0"
