"""Checks shared by the command-line tools (`evaluate`, `score`, `select`, `analysis`): integer flags and output
paths, each failing with one line that names the flag, so that no work is done before a bad flag is refused."""

import argparse
from pathlib import Path


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    return _integer(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    return _integer(text, 0, "an integer >= 0")


def _integer(text: str, least: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < least:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: pass {what}")
    return value


def check_output_file(path: Path, option: str = "--out") -> None:
    """Raise unless `path` can be written as a file: not an existing directory, and no file where a folder above
    it must be."""
    if path.is_dir():
        raise ValueError(f"{option} {path} is an existing directory; pass the path of the file to write")
    _check_parents(path, option)


def check_output_dir(path: Path, option: str = "--out") -> None:
    """Raise unless `path` can be (or already is) a directory to write into: not an existing file, and no file
    where a folder above it must be."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file; pass a directory (it is created if missing)")
    _check_parents(path, option)


def _check_parents(path: Path, option: str) -> None:
    existing = next(parent for parent in path.absolute().parents if parent.exists())
    if not existing.is_dir():
        raise ValueError(f"{option} {path}: {existing} is a file, not a directory; pass a path in a directory")
