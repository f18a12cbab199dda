"""steno-exportd: the export daemon of the Silent Steno meeting recorder."""

__version__ = "0.1.0"
