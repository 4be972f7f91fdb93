"""An OCI distribution client and helpers that know nothing of Django."""

__version__ = "0.1.0"
