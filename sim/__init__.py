"""kvsim: an LLM-serving KV-cache simulator."""

from importlib.metadata import PackageNotFoundError, version


def _version() -> str:
    """The installed package's version; from a source tree that is not installed, pyproject.toml's."""
    try:
        return version("kvsim")
    except PackageNotFoundError:
        pass
    import os
    import tomllib

    pyproject = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml")
    try:
        with open(pyproject, "rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    except (OSError, ValueError, KeyError):
        return "0+unknown"


__version__ = _version()
