"""Hull: a container and microVM engine."""

__version__ = "0.1.0"
