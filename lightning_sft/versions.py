"""The dependency ranges this project declares (pyproject.toml) and tests at both ends, checked on import.

`lightning_sft/__init__.py` calls `require_supported_versions()`, so a version outside a declared range stops
at `import lightning_sft` (and so before any run starts) with one line naming the package, the version found
and the supported range, instead of failing somewhere inside a fit. Only the standard library and
`packaging` are imported here: an unsupported version of anything else must not break this check itself.
"""

import importlib.metadata
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

DISTRIBUTION = "lightning-sft"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


class UnsupportedVersion(ImportError):
    """An installed direct dependency is outside the range this project declares and tests."""


def declared_requirements() -> list[Requirement]:
    """The runtime dependencies (no extras): from the source tree's pyproject.toml when this module runs from
    a checkout (editable installs, `PYTHONPATH=.`), else from the installed distribution's metadata."""
    if PYPROJECT.is_file():
        project = tomllib.loads(PYPROJECT.read_text())["project"]
        if project["name"] == DISTRIBUTION:
            return [Requirement(text) for text in project["dependencies"]]
    found = [Requirement(text) for text in importlib.metadata.requires(DISTRIBUTION) or []]
    return [requirement for requirement in found if requirement.marker is None]


def unsupported(requirements: list[Requirement]) -> list[str]:
    """One message per requirement whose installed version is outside its range. A package that is not
    installed is not reported here: importing it fails by name where it is used (the scorer alone runs
    without DeepSpeed, datasets or jsonargparse, as on a bare GPU image)."""
    messages = []
    for requirement in requirements:
        try:
            found = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if not requirement.specifier.contains(Version(found), prereleases=True):
            bounds = sorted((str(bound) for bound in requirement.specifier), key=lambda bound: (bound[0] != ">", bound))
            wanted = requirement.name + ",".join(bounds)
            messages.append(f"{requirement.name} {found} is installed; lightning-sft supports {wanted}"
                            f" (pip install '{wanted}')")
    return messages


def require_supported_versions() -> None:
    """Raises UnsupportedVersion, one line per package out of range, if any is."""
    messages = unsupported(declared_requirements())
    if messages:
        raise UnsupportedVersion("; ".join(messages))


def installed_versions() -> str:
    """`name==version` (or `name: not installed`) of every declared dependency, comma-separated (for logs and
    benchmark tables)."""
    found = []
    for requirement in declared_requirements():
        try:
            found.append(f"{requirement.name}=={importlib.metadata.version(requirement.name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{requirement.name}: not installed")
    return ", ".join(found)
