"""Where the files the daemon ships with are: `config` (default.yaml, taxonomy.yaml, maps/), `migrations` (the
Alembic environment and versions) and `adapters` (the shipped default-it adapter).

In the source tree they are the top-level folders of those names. A built wheel carries them inside this package
(setup.cfg maps each folder to `triage_core.shipped.<name>`), so an installed copy finds them with
importlib.resources, in any virtualenv, from any working folder. An editable install (`pip install -e .`, as
`make` does) keeps using the checkout's folders.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

#: The shipped folders, each with a file or folder that must be in it.
SHIPPED = {"config": "default.yaml", "migrations": "env.py", "adapters": "default-it"}


def shipped_path(name: str) -> Path:
    """The folder `name` ("config", "migrations" or "adapters"): inside the installed package, else the checkout's."""
    if name not in SHIPPED:
        raise ValueError(f"no shipped folder {name!r}; one of {', '.join(SHIPPED)}")
    packaged = resources.files(__name__).joinpath(name)
    # Wheels install unzipped, so the package's folder is a real one (Alembic and transformers need real paths).
    if isinstance(packaged, Path) and packaged.joinpath(SHIPPED[name]).exists():
        return packaged
    checkout = Path(__file__).resolve().parent.parent.parent / name
    if checkout.joinpath(SHIPPED[name]).exists():
        return checkout
    return Path(str(packaged))


__all__ = ["SHIPPED", "shipped_path"]
