"""The one place kaffi's version is written (pyproject.toml reads the same number)."""

__version__ = "0.1.0"
