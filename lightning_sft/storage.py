"""Saving and loading head-activation patterns (safetensors + a JSON index), and atomic file writes.

Layout of a patterns directory (the callback writes `<log_dir>/head_patterns`):

    <save_dir>/index.json                          what is there (below)
    <save_dir>/<probe>/step_<step:08d>.safetensors `pattern` float32 [L, H]; optionally
                                                   `per_example` float32 [N, L, H] and `losses` float32 [N]

index.json = {"format_version": 1, "num_layers": L, "num_heads": H,
              "probes": {probe: {"steps": [sorted ints], "metrics": {step: {name: float}}}},
              "model": {...}  (only when given), "run_id": str  (only when given)}

A directory holds the patterns of one run: once its index records a `run_id`, saving with another one is
refused, so two runs never mix in one directory. A save holds the lock `<save_dir>/.lock` (`fcntl.flock`) from
reading the index to writing it, so two processes saving into one directory at once cannot mix either.

Every file is written atomically (temp file in the same directory, then `os.replace`), so a crash leaves
either the old file or the new one, never a torn one. A pattern file is written before the index lists it.
Links inside a store are not followed: a probe folder or lock file that is a symbolic link is refused.
"""

import errno
import fcntl
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

FORMAT_VERSION = 1
INDEX_NAME = "index.json"
PROBE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
LOCK_NAME = ".lock"
# a probe is the folder `<probe>` and the TensorBoard run `probe_<probe>`: one file name, 255 bytes on Linux
MAX_PROBE_NAME = 255 - len("probe_")


def check_probe_name(name: object) -> str:
    """`name` if it is a valid probe name, safe as a file name, a TensorBoard tag and a CLI argument: letters,
    digits, '_', '.' and '-', not starting with '.' or '-', at most `MAX_PROBE_NAME` characters. Raises
    ValueError naming it otherwise."""
    if not isinstance(name, str) or not PROBE_NAME.fullmatch(name):
        raise ValueError(
            f"probe name {name!r} is not safe for file names and TensorBoard tags; "
            "use letters, digits, '_', '.' and '-' only, not starting with '.' or '-'"
        )
    if len(name) > MAX_PROBE_NAME:
        raise ValueError(
            f"probe name {name[:20]}... is {len(name)} characters long; at most {MAX_PROBE_NAME} fit in a file name "
            "(as the folder `probe_<name>`); choose a shorter name"
        )
    return name


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same directory and `os.replace` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _atomic_write_in(folder, path.name, data)
    finally:
        os.close(folder)


def _atomic_write_in(folder: int, name: str, data: bytes) -> None:
    """`atomic_write_bytes` of `data` to the file `name` in the open directory `folder` (a file descriptor):
    the temp file is created exclusively and the rename replaces a link named `name`, never following one."""
    temp = f".{name}.{uuid.uuid4().hex}.tmp"
    try:
        # os.open with 0o666 lets the umask set the permissions, as open() would (mkstemp forces 0o600).
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666, dir_fd=folder)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        try:
            os.unlink(temp, dir_fd=folder)
        except FileNotFoundError:
            pass
        raise


def _open_entry(save_dir: Path, name: str, flags: int, mode: int = 0o666) -> int:
    """A file descriptor of the entry `name` of the store `save_dir`, opened without following a link."""
    try:
        return os.open(save_dir / name, flags | os.O_NOFOLLOW, mode)
    except OSError as error:
        if error.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        raise ValueError(
            f"{save_dir / name} is a symbolic link (or not a folder); a patterns store holds real files and folders "
            "only, so that nothing is written outside it. Remove the link, or save to another directory."
        ) from None


def atomic_write_text(path: str | Path, text: str) -> None:
    """`atomic_write_bytes` of `text` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _float32(tensor: torch.Tensor | np.ndarray, name: str, ndim: int) -> torch.Tensor:
    tensor = torch.as_tensor(tensor).detach().to(device="cpu", dtype=torch.float32).contiguous()
    if tensor.ndim != ndim:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}; expected {ndim} dimensions")
    return tensor


def _check_scores(
    pattern: torch.Tensor, per_example: torch.Tensor | None, losses: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """The tensors of one scored probe, float32 on CPU, with `per_example` [N, L, H] and `losses` [N] checked."""
    tensors = {"pattern": pattern}
    if per_example is not None:
        per_example = _float32(per_example, "per_example", 3)
        if per_example.shape[1:] != pattern.shape:
            raise ValueError(
                f"per_example has shape {tuple(per_example.shape)} but pattern has shape {tuple(pattern.shape)}; "
                "pass per_example as [N, num_layers, num_heads]"
            )
        tensors["per_example"] = per_example
    if losses is not None:
        losses = _float32(losses, "losses", 1)
        if per_example is not None and len(losses) != len(per_example):
            raise ValueError(
                f"losses has {len(losses)} values but per_example has {len(per_example)} examples; "
                "pass one loss per example"
            )
        tensors["losses"] = losses
    return tensors


def load_index(save_dir: str | Path) -> dict[str, Any]:
    """The index of a patterns directory, with the metric step keys as ints."""
    path = Path(save_dir) / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no patterns in {save_dir}: expected {path}, written by storage.save_pattern "
            "(HeadActivationCallback writes it under <log_dir>/head_patterns)"
        )
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path} is not valid JSON ({error}); the patterns index is corrupt") from error
    if not isinstance(index, dict) or index.get("format_version") != FORMAT_VERSION:
        version = index.get("format_version") if isinstance(index, dict) else None
        raise ValueError(
            f"{path} has format_version {version!r}; this version of lightning-sft "
            f"reads format_version {FORMAT_VERSION}"
        )
    probes = index.get("probes")
    if not isinstance(probes, dict) or not all(
        isinstance(entry, dict) and isinstance(entry.get("steps"), list) and isinstance(entry.get("metrics"), dict)
        for entry in probes.values()
    ):
        raise ValueError(
            f"{path}: 'probes' is {json.dumps(probes)[:80]}; expected {{probe: {{\"steps\": [...], "
            "\"metrics\": {...}}}, as storage.save_pattern writes it; the patterns index is corrupt"
        )
    try:
        _check_index_fields(index)
    except ValueError as error:
        raise ValueError(f"{path}: {error}; the patterns index is corrupt") from None
    for entry in probes.values():
        entry["metrics"] = {int(step): values for step, values in entry["metrics"].items()}
    return index


def _is_int(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _check_index_fields(index: dict[str, Any]) -> None:
    """Raises ValueError naming the first field of a parsed index whose type or value `save_pattern` never writes."""
    for field in ("num_layers", "num_heads"):
        if not _is_int(index.get(field), 1):
            raise ValueError(f"'{field}' is {json.dumps(index.get(field))}; expected an int >= 1")
    if "run_id" in index and not isinstance(index["run_id"], str):
        raise ValueError(f"'run_id' is {json.dumps(index['run_id'])}; expected a string")
    for probe, entry in index["probes"].items():
        check_probe_name(probe)
        if not all(_is_int(step, 0) for step in entry["steps"]):
            raise ValueError(
                f"'probes.{probe}.steps' is {json.dumps(entry['steps'])[:80]}; expected a list of ints >= 0"
            )
        for step, values in entry["metrics"].items():
            if not (step.isascii() and step.isdigit()):
                raise ValueError(f"'probes.{probe}.metrics' has step key {step!r}; expected step numbers")
            if not isinstance(values, dict) or not all(
                isinstance(value, (int, float)) and not isinstance(value, bool) for value in values.values()
            ):
                raise ValueError(
                    f"'probes.{probe}.metrics.{step}' is {json.dumps(values)[:80]}; expected {{name: number}}"
                )


def pattern_path(save_dir: str | Path, probe: str, step: int) -> Path:
    """Where `save_pattern` writes the pattern of `probe` at `step`."""
    return Path(save_dir) / probe / f"step_{step:08d}.safetensors"


def save_pattern(
    save_dir: str | Path,
    probe: str,
    step: int,
    pattern: torch.Tensor | np.ndarray,
    *,
    per_example: torch.Tensor | np.ndarray | None = None,
    losses: torch.Tensor | np.ndarray | None = None,
    metrics: Mapping[str, float] | None = None,
    model: Mapping[str, Any] | None = None,
    run_id: str | None = None,
) -> Path:
    """Save one probe's pattern [L, H] at one optimizer step and record it (and `metrics`) in the index.

    `model` describes the base model (e.g. {"name_or_path": ..., "class": ...}); it is stored in the index
    and must not change within a directory. `run_id` names the run the directory belongs to: saving with a
    `run_id` other than the recorded one is refused. Saving a step again replaces it. Returns the pattern file.
    """
    check_probe_name(probe)
    if not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step={step!r}; pass the optimizer step as an int >= 0")
    step = int(step)
    pattern = _float32(pattern, "pattern", 2)
    tensors = _check_scores(pattern, per_example, losses)
    metric_values = {name: float(value) for name, value in (metrics or {}).items()}
    for name, value in metric_values.items():
        if not np.isfinite(value):
            raise ValueError(f"metric {name}={value} of probe {probe!r} at step {step} is not finite")
    save_dir = Path(save_dir)
    try:
        save_dir.mkdir(parents=True, exist_ok=True)
        lock = _open_entry(save_dir, LOCK_NAME, os.O_RDWR | os.O_CREAT)
    except OSError as error:
        raise _unwritable(save_dir, probe, step, error) from error
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when closed
        index = _checked_index(save_dir, pattern.shape, model, run_id)
        try:
            try:
                os.mkdir(save_dir / probe)
            except FileExistsError:  # a folder, or a link that _open_entry refuses
                pass
            folder = _open_entry(save_dir, probe, os.O_RDONLY | os.O_DIRECTORY)
            try:
                metadata = {"format_version": str(FORMAT_VERSION), "probe": probe, "step": str(step)}
                _atomic_write_in(folder, pattern_path(save_dir, probe, step).name, save(tensors, metadata=metadata))
            finally:
                os.close(folder)
            entry = index["probes"].setdefault(probe, {"steps": [], "metrics": {}})
            entry["steps"] = sorted(set(entry["steps"]) | {step})
            if metric_values:
                entry["metrics"][step] = metric_values
            entry["metrics"] = dict(sorted(entry["metrics"].items()))
            atomic_write_text(save_dir / INDEX_NAME, json.dumps(index, indent=1) + "\n")
        except OSError as error:
            raise _unwritable(save_dir, probe, step, error) from error
    finally:
        os.close(lock)
    return pattern_path(save_dir, probe, step)


def _unwritable(save_dir: Path, probe: str, step: int, error: OSError) -> OSError:
    return OSError(
        f"cannot write the pattern of probe {probe!r} at step {step} into {save_dir}: {error.strerror or error} "
        f"({error.filename or save_dir}); make the folder writable (or free space), then resume from the last "
        "checkpoint"
    )


def _checked_index(
    save_dir: Path, shape: torch.Size, model: Mapping[str, Any] | None, run_id: str | None
) -> dict[str, Any]:
    """The index of `save_dir` (a new one if none) with `model` and `run_id` recorded, after checking that
    the store holds patterns of this `shape`, `model` and run."""
    num_layers, num_heads = shape
    try:
        index = load_index(save_dir)
    except FileNotFoundError:
        index = {"format_version": FORMAT_VERSION, "num_layers": num_layers, "num_heads": num_heads, "probes": {}}
    if (index["num_layers"], index["num_heads"]) != (num_layers, num_heads):
        raise ValueError(
            f"pattern has shape {(num_layers, num_heads)} but {save_dir / INDEX_NAME} holds patterns of shape "
            f"{(index['num_layers'], index['num_heads'])}; save patterns of a different model to another directory"
        )
    if model is not None:
        model = json.loads(json.dumps(dict(model)))  # what the index will hold, to compare like with like
        if index.get("model", model) != model:
            raise ValueError(
                f"model {model} differs from {index['model']} recorded in {save_dir / INDEX_NAME}; "
                "save patterns of a different model to another directory"
            )
        index["model"] = model
    if run_id is not None:
        if index.get("run_id", run_id) != run_id:
            raise ValueError(
                f"{save_dir} holds the patterns of run {index['run_id']}, not of this run ({run_id}); "
                "save each run's patterns to its own directory"
            )
        index["run_id"] = run_id
    return index


def load_pattern_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of one pattern or scores file: `pattern` and, when saved, `per_example` and `losses`."""
    try:
        return load_file(Path(path))
    except SafetensorError as error:
        raise _unreadable(path, error) from error


def _unreadable(path: str | Path, error: Exception) -> ValueError:
    return ValueError(f"{path} is not a readable safetensors file ({error}); it is truncated or corrupt")


def load_patterns(save_dir: str | Path) -> dict[str, dict[int, torch.Tensor]]:
    """{probe: {step: pattern float32 [L, H]}} for every probe in the index, steps ascending."""
    index = load_index(save_dir)
    if not index["probes"]:
        raise FileNotFoundError(f"{Path(save_dir) / INDEX_NAME} lists no probes; save a pattern first")
    expected = (index["num_layers"], index["num_heads"])
    patterns = {}
    for probe, entry in index["probes"].items():
        patterns[probe] = {}
        for step in entry["steps"]:
            path = pattern_path(save_dir, probe, step)
            if not path.is_file():
                raise FileNotFoundError(f"{path} is listed in the index but missing; the directory is incomplete")
            try:
                with safe_open(path, framework="pt") as file:
                    pattern = file.get_tensor("pattern")
            except SafetensorError as error:
                raise _unreadable(path, error) from error
            if tuple(pattern.shape) != expected:
                raise ValueError(f"{path} holds a pattern of shape {tuple(pattern.shape)}, the index says {expected}")
            patterns[probe][step] = pattern
    return patterns


def save_scores(
    path: str | Path,
    pattern: torch.Tensor | np.ndarray,
    per_example: torch.Tensor | np.ndarray,
    losses: torch.Tensor | np.ndarray,
    *,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Save one standalone scored probe set as safetensors: `pattern` [L, H], `per_example` [N, L, H] and
    `losses` [N] (float32), with string `metadata` (e.g. model and data source); read with `load_pattern_file`.
    """
    metadata = dict(metadata or {})
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise ValueError(f"metadata[{key!r}]={value!r} is not a str; safetensors metadata holds strings only")
    tensors = _check_scores(_float32(pattern, "pattern", 2), per_example, losses)
    path = Path(path)
    atomic_write_bytes(path, save(tensors, metadata={"format_version": str(FORMAT_VERSION), **metadata}))
    return path
