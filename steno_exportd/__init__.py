"""steno-exportd: the export daemon of the Silent Steno meeting recorder."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("steno-exportd")     # set from debian/changelog when the package is built
except PackageNotFoundError:                  # a source tree that was never installed
    __version__ = "0+unknown"
