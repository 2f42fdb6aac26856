"""The web page and HTTP API behind `clipsearch serve`.

It needs the ``web`` extra (FastAPI, uvicorn, python-multipart); importing this package does
not, so the rest of clipsearch works without them::

    from clipsearch.web import create_app   # imports FastAPI now

    app = create_app("indexes/photos")      # an ASGI app: uvicorn, TestClient, ...
"""

from __future__ import annotations

import importlib
from typing import Any

from clipsearch.errors import ClipsearchError

# import name -> the name pip knows it by
REQUIRED = {"fastapi": "fastapi", "uvicorn": "uvicorn", "python_multipart": "python-multipart"}


def missing_packages() -> list[str]:
    """The web extra's packages that cannot be imported, by their pip names."""
    missing = []
    for module, package in REQUIRED.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    return missing


def require() -> None:
    """Raise a ClipsearchError that says how to install what the web page needs."""
    missing = missing_packages()
    if missing:
        raise ClipsearchError(
            f"`clipsearch serve` needs {' and '.join(missing)}, not installed here; "
            "install the web extra: pip install 'clipsearch[web]'"
        )


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from clipsearch.web.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["REQUIRED", "create_app", "missing_packages", "require"]
