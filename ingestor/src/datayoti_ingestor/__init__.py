"""DataYoti Edge: the ingestor and the on-device `datayoti` program."""

__version__ = "0.1.0"  # the one place; pyproject.toml reads it
