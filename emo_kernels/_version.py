"""The package version: its only copy (pyproject.toml and setup.py read it from here)."""
__version__ = "0.1.0"
