"""Package layout (the rest of the metadata is in setup.cfg).

The top-level folders config/, migrations/ and adapters/ stay where the design puts them; the wheel carries them
as triage_core/shipped/<name> (found at run time with importlib.resources, triage_core/shipped/__init__.py).
"""
from setuptools import find_packages, setup

SHIPPED = ("config", "migrations", "adapters")

setup(
    packages=find_packages(include=["triage_core", "triage_core.*", "connectors", "connectors.*", "trainer",
                                    "trainer.*"]) + [f"triage_core.shipped.{name}" for name in SHIPPED],
    package_dir={f"triage_core.shipped.{name}": name for name in SHIPPED},
)
