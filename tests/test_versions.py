"""Versions outside the declared ranges are refused on import, in one line; versions inside pass."""

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from lightning_sft import versions

pytestmark = pytest.mark.lowest

ROOT = Path(__file__).resolve().parents[1]


def installed(monkeypatch, found: dict[str, str | None]) -> None:
    """importlib.metadata.version answers `found` (None: not installed)."""
    def version(name):
        if found.get(name) is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return found[name]
    monkeypatch.setattr(versions.importlib.metadata, "version", version)


@pytest.mark.parametrize("found, problem", [
    ("5.0.0", None), ("5.17.0", None), ("5.99.1", None), ("4.57.1", "transformers 4.57.1 is installed"),
    ("6.0.0", "transformers 6.0.0 is installed"), ("6.0.0rc1", "transformers 6.0.0rc1 is installed"),
    (None, None),  # not installed: fails by name where it is imported, not here
])
def test_range_is_checked(monkeypatch, found, problem):
    installed(monkeypatch, {"transformers": found})
    messages = versions.unsupported([Requirement("transformers>=5.0,<6")])
    if problem is None:
        assert messages == []
    else:
        assert len(messages) == 1 and messages[0].startswith(problem)
        assert "transformers>=5.0,<6" in messages[0]


def test_local_build_labels_are_in_range(monkeypatch):
    installed(monkeypatch, {"torch": "2.11.0+cu130"})  # the GPU image's torch
    assert versions.unsupported([Requirement("torch>=2.6,<2.14")]) == []


def test_declared_requirements_are_pyprojects_runtime_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert [str(r) for r in versions.declared_requirements()] == [str(Requirement(t)) for t in project["dependencies"]]


def test_import_and_train_refuse_an_unsupported_version_in_one_line(tmp_path):
    """A real distribution's metadata earlier on sys.path, as `pip install transformers==4.57.1` leaves it."""
    info = tmp_path / "transformers-4.57.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: transformers\nVersion: 4.57.1\n")
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    imported = subprocess.run([sys.executable, "-c", "import lightning_sft"], cwd=ROOT, env=env,
                              capture_output=True, text=True)
    assert imported.returncode == 1
    assert "UnsupportedVersion: transformers 4.57.1 is installed; lightning-sft supports" in imported.stderr
    run = subprocess.run([sys.executable, "train.py", "fit", "--config", "configs/demo.yaml"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.splitlines() == ["train.py: error: transformers 4.57.1 is installed; lightning-sft supports"
                                       " transformers>=5.0,<6 (pip install 'transformers>=5.0,<6')"]
