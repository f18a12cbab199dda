"""steno-exportd: the export daemon of the Silent Steno meeting recorder."""


def __getattr__(name: str) -> str:
    """`__version__`, read once from the installed metadata (set from debian/changelog when the package
    is built); lazily, since importlib.metadata costs ~30 ms and most commands never need it."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version
    try:
        value = version("steno-exportd")
    except PackageNotFoundError:             # a source tree that was never installed
        value = "0+unknown"
    globals()["__version__"] = value
    return value
