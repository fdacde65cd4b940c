"""The package version, read by pyproject.toml and used as the default release."""

__version__ = "0.1.0"
