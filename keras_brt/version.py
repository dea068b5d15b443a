"""The single source of the package version (setup.py reads it)."""

__version__ = "0.1.0"
