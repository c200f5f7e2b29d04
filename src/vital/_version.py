"""The installed distribution's version, read from its metadata so that it is written in one place only
(pyproject.toml). A source tree that is not installed reports "0+unknown"."""

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "vital-featvis"  # the name in the package index; the import name is `vital`

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:
    __version__ = "0+unknown"
