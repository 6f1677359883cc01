"""armo: an interpretable, steerable ArmoRM-style reward-model scoring service."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("armo-rm")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"
