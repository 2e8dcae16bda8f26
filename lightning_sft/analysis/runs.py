"""Finding the patterns directories of runs and merging their probes for analysis."""

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from lightning_sft.storage import INDEX_NAME, load_index, load_pattern_file, load_patterns, pattern_path


def find_patterns_dir(run: str | Path) -> Path:
    """The patterns directory of `run`: `run` itself when it holds index.json, else the one below it.

    When several are below `run` (e.g. `version_0/head_patterns` and `version_1/head_patterns`), the one
    whose index was written last is used, and a note on stderr says so. An index.json that is not JSON, or
    that is ours (it has "probes") but malformed, is an error naming it: skipping it would analyse another run.
    """
    run = Path(run)
    if run.exists() and not run.is_dir():
        raise ValueError(f"{run} is a file, not a run directory; pass the patterns directory holding {INDEX_NAME}"
                         " or a log directory above it")
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} does not exist; pass a patterns directory or a log directory")
    if (run / INDEX_NAME).is_file():
        return run
    found = []
    for index_path in run.rglob(INDEX_NAME):
        try:
            raw = json.loads(index_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            raise ValueError(f"{index_path} is not valid JSON ({error}); the patterns index is corrupt") from error
        if not isinstance(raw, dict) or "probes" not in raw:  # another tool's index.json
            continue
        if load_index(index_path.parent)["probes"]:
            found.append(index_path)
    if not found:
        raise FileNotFoundError(
            f"no patterns under {run}: expected a directory holding {INDEX_NAME} (HeadActivationCallback writes "
            "<log_dir>/head_patterns); pass that directory or one above it"
        )
    latest = max(found, key=lambda path: path.stat().st_mtime).parent
    if len(found) > 1:
        others = ", ".join(str(path.parent) for path in sorted(found) if path.parent != latest)
        print(f"note: {run} holds {len(found)} patterns directories; using the latest, {latest} "
              f"(others: {others})", file=sys.stderr)
    return latest


def _labels(runs: Sequence[str | Path]) -> list[str]:
    """The shortest trailing path of each run that tells them apart (`gsm8k/version_0`, ...)."""
    parts = [Path(run).resolve().parts for run in runs]
    for length in range(1, max(map(len, parts)) + 1):
        labels = ["/".join(part[-length:]) for part in parts]
        if len(set(labels)) == len(labels):
            return labels
    raise AssertionError("distinct resolved directories always have distinct paths")


@dataclass(frozen=True)
class Patterns:
    """Patterns of one model merged over runs: `probes` = {probe: {step: float64 [L, H]}}, steps ascending;
    `sources` = {probe: the patterns directory it was read from}."""

    probes: dict[str, dict[int, np.ndarray]]
    shape: tuple[int, int]
    sources: dict[str, Path]

    def require(self, names: Sequence[str], what: str) -> None:
        """Raise if a name in `names` is not a probe here, listing the probes there are."""
        unknown = [name for name in names if name not in self.probes]
        if unknown:
            raise ValueError(
                f"{what} {', '.join(map(repr, unknown))} not found; the probes are: {', '.join(self.probes)}"
            )

    def base_and_last(self, probe: str) -> tuple[int, np.ndarray, int, np.ndarray]:
        """(0, base pattern, last step, last pattern): the base model's pattern (step 0) and the last one.

        A probe without step 0 is refused rather than measured from its earliest step: changes from a
        fine-tuned model would look like changes from the base model, a wrong number that looks right.
        """
        steps = self.probes[probe]
        if len(steps) < 2:
            raise ValueError(
                f"probe {probe!r} has a pattern at step {', '.join(map(str, steps))} only; the analysis compares "
                "the base model with a later step, so it needs at least two steps"
            )
        first, last = min(steps), max(steps)
        if first != 0:
            raise ValueError(
                f"probe {probe!r} has no pattern at step 0 (the base model); its earliest is step {first} in "
                f"{self.sources[probe]}. A resumed run must write to the patterns directory of its first part; "
                "pass that directory"
            )
        return first, steps[first], last, steps[last]

    def per_example(self, probe: str, step: int) -> np.ndarray:
        """float64 [N, L, H]: each probe row's pattern at `step` (`HeadActivationCallback(per_example=True)`)."""
        path = pattern_path(self.sources[probe], probe.rsplit("/", 1)[-1], step)  # merged names are `<run>/<probe>`
        tensors = load_pattern_file(path)
        if "per_example" not in tensors:
            raise ValueError(f"{path} holds no per-example patterns; train with HeadActivationCallback("
                             "per_example=True) to bootstrap over probe rows")
        return tensors["per_example"].double().numpy()

    def change(self, probe: str, shares: bool = False) -> np.ndarray:
        """Last pattern minus base pattern [L, H] (the pattern change the paper analyses).

        With `shares`, each pattern is first divided by its sum (each head's share of the probe's total
        score), so the change is that of where the score sits, not of its overall size, which follows the
        probe's loss."""
        _, base, last_step, last = self.base_and_last(probe)
        if shares:
            for step, pattern in ((0, base), (last_step, last)):
                if not pattern.sum() > 0:
                    raise ValueError(f"probe {probe!r} sums to {pattern.sum()} at step {step} in "
                                     f"{self.sources[probe]}; its heads have no shares to compare")
            return last / last.sum() - base / base.sum()
        return last - base

    def scale_change(self, probe: str) -> float:
        """Total score at the last step over the base's (sum of the pattern): how much the overall size moved."""
        _, base, _, last = self.base_and_last(probe)
        return float(last.sum() / base.sum())


def _check_finite(directory: Path, probes: dict[str, dict[int, np.ndarray]]) -> None:
    """Raise naming the probe, step and file of the first pattern holding a NaN or an infinity: every statistic
    and picture drawn from it would be meaningless (a collapsed colour scale, NaN correlations)."""
    for probe, steps in probes.items():
        for step, pattern in steps.items():
            if not np.isfinite(pattern).all():
                raise ValueError(
                    f"probe {probe!r}, step {step}: {pattern_path(directory, probe, step)} holds"
                    f" {np.isnan(pattern).sum()} NaN and {np.isinf(pattern).sum()} infinite values; nothing is"
                    " computed or drawn from it. The scores diverged at that step: analyse a run without it"
                )


def load_runs(runs: Sequence[str | Path]) -> Patterns:
    """Merge the probes of several runs (one fine-tuning run per task, say) of the same model.

    A probe name found in more than one run is renamed `<run>/<probe>` in every run that has it, `<run>` being
    the shortest trailing part of the run's path (as given) that tells the runs apart. Runs of different models
    (pattern shapes or recorded model info differ) are refused, and so is a pattern holding a NaN or infinity.
    """
    if not runs:
        raise ValueError("no run given; pass one or more patterns directories or log directories")
    directories = [find_patterns_dir(run) for run in runs]
    resolved = [directory.resolve() for directory in directories]
    for position, directory in enumerate(resolved):
        if directory in resolved[:position]:
            raise ValueError(f"{directories[position]} is given twice (as {runs[resolved.index(directory)]} and "
                             f"{runs[position]}); pass each run once")
    indexes = [load_index(directory) for directory in directories]
    shape = (indexes[0]["num_layers"], indexes[0]["num_heads"])
    for run, index in zip(runs[1:], indexes[1:]):
        other_shape = (index["num_layers"], index["num_heads"])
        if other_shape != shape:
            raise ValueError(
                f"runs of different models: {runs[0]} has patterns of shape {shape} (layers, heads), {run} has "
                f"{other_shape}; analyse runs of one model together"
            )
    models = [(run, index["model"]) for run, index in zip(runs, indexes) if "model" in index]
    for run, model in models[1:]:
        if model != models[0][1]:
            raise ValueError(
                f"runs of different models: {models[0][0]} records model {models[0][1]}, {run} records {model}; "
                "analyse runs of one model together"
            )
    loaded = [{probe: {step: pattern.double().numpy() for step, pattern in steps.items()}
               for probe, steps in load_patterns(directory).items()} for directory in directories]
    for directory, probes in zip(directories, loaded):
        _check_finite(directory, probes)
    labels = _labels(runs)
    counts = Counter(probe for probes in loaded for probe in probes)
    merged, sources = {}, {}
    for label, directory, probes in zip(labels, directories, loaded):
        for probe, steps in probes.items():
            name = f"{label}/{probe}" if counts[probe] > 1 else probe
            if name != probe:
                print(f"note: probe {probe} is in several runs; this run's is named {name}", file=sys.stderr)
            merged[name] = steps
            sources[name] = directory
    return Patterns(merged, shape, sources)
