"""Campaign: configuration, the command line and the Ray driver that joins the stages."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("declouder")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
