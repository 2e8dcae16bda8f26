"""The paper's analyses of saved patterns: Table 1 (stats), Figure 2 (similarity), Figure 5 (drift),
Figure 4 (composition). Each command writes CSV (+ PNG) files and returns a markdown summary to print."""

import csv
import io
from pathlib import Path
from typing import Sequence

from lightning_sft import stats
from lightning_sft.analysis.runs import Patterns
from lightning_sft.plots import (composition_figure, correlation_heatmap, drift_figure, pattern_heatmap,
                                 pattern_limits, save_figure)
from lightning_sft.storage import atomic_write_text

COEFFICIENT_PREFIX = "coefficient_"  # compose.csv column of a basis' coefficient, read back by `mix --from-compose`


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; floats with 4 decimals."""
    def cell(value: object) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    """Write a CSV atomically; floats at full precision (repr)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
    return path


def stats_command(patterns: Patterns, out: Path | None = None, bootstrap: int = 0) -> str:
    """Table 1: Gini, coefficient of variation and Pearson kurtosis of each probe's pattern, base vs last step.

    With `bootstrap` resamples, also 95% percentile intervals over probe rows (`stats.bootstrap_table1`) of
    each statistic at the base, at the last step, of its change and of the Pearson drift (base vs last); a
    change whose interval excludes 0 exceeds the probe's sampling noise. Writes `stats.csv` and `stats.md`
    (and `stats_bootstrap.csv`) to `out` when given.
    """
    header = ["probe", "base_step", "last_step", "gini_base", "gini_last", "cv_base", "cv_last",
              "kurtosis_base", "kurtosis_last"]
    rows = []
    for probe in patterns.probes:
        base_step, base, last_step, last = patterns.base_and_last(probe)
        rows.append([probe, base_step, last_step, stats.gini(base), stats.gini(last),
                     stats.coefficient_of_variation(base), stats.coefficient_of_variation(last),
                     stats.kurtosis(base), stats.kurtosis(last)])
    table = markdown_table(header, rows)
    if out is not None:
        write_csv(out / "stats.csv", header, rows)
    if bootstrap:
        intervals = []
        for probe, base_step, last_step, *_ in rows:
            base, last = patterns.per_example(probe, base_step), patterns.per_example(probe, last_step)
            intervals.append((probe, len(base), stats.bootstrap_table1(base, last, resamples=bootstrap)))
        names = list(intervals[0][2])
        table += (f"\n95% percentile bootstrap intervals over probe rows ({bootstrap} resamples): value [low, high]; "
                  "a change whose interval excludes 0 exceeds the probe's sampling noise\n\n")
        table += markdown_table(["probe", "rows", *names], [
            [probe, count, *(f"{value:.4f} [{low:.4f}, {high:.4f}]" for value, low, high in values.values())]
            for probe, count, values in intervals])
        if out is not None:
            write_csv(out / "stats_bootstrap.csv", ["probe", "rows", *(f"{name}_{part}" for name in names
                                                                       for part in ("value", "low", "high"))],
                      [[probe, count, *(number for triple in values.values() for number in triple)]
                       for probe, count, values in intervals])
    if out is not None:
        atomic_write_text(out / "stats.md", table)
    return table


def similarity_command(patterns: Patterns, out: Path) -> str:
    """Figure 2: Pearson correlation across probes of the pattern changes (last - base), and of the patterns
    themselves at the base and at the last step. Writes `similarity_{change,base,last}.{csv,png}`."""
    if len(patterns.probes) < 2:
        raise ValueError(
            f"similarity compares probes, but there is only {', '.join(patterns.probes)}; pass runs with at "
            "least two probes"
        )
    ends = {probe: patterns.base_and_last(probe) for probe in patterns.probes}
    matrices = {
        "change": {probe: last - base for probe, (_, base, _, last) in ends.items()},
        "base": {probe: base for probe, (_, base, _, _) in ends.items()},
        "last": {probe: last for probe, (_, _, _, last) in ends.items()},
    }
    titles = {
        "change": "Correlation of pattern changes (last - base)",
        "base": "Correlation of patterns before fine-tuning (base)",
        "last": "Correlation of patterns after fine-tuning (last step)",
    }
    summary = []
    for kind, named in matrices.items():
        names, matrix = stats.change_correlation(named)
        rows = [[name, *map(float, matrix[row])] for row, name in enumerate(names)]
        write_csv(out / f"similarity_{kind}.csv", ["probe", *names], rows)
        save_figure(correlation_heatmap(names, matrix, titles[kind]), out / f"similarity_{kind}.png")
        summary.append(f"{titles[kind]}:\n\n{markdown_table(['probe', *names], rows)}")
    return "\n".join(summary)


def drift_command(patterns: Patterns, out: Path) -> str:
    """Figure 5: Pearson r and MSE of each probe's pattern at every saved step vs its base pattern.

    Writes `drift.csv` (probe, step, pearson, mse) and `drift.png`.
    """
    drift = {}
    for probe, steps in patterns.probes.items():
        _, base, _, _ = patterns.base_and_last(probe)
        drift[probe] = {step: (stats.pearson(pattern, base), stats.mse(pattern, base))
                        for step, pattern in steps.items()}
    header = ["probe", "step", "pearson", "mse"]
    rows = [[probe, step, *values] for probe, by_step in drift.items() for step, values in by_step.items()]
    write_csv(out / "drift.csv", header, rows)
    save_figure(drift_figure(drift), out / "drift.png")
    return markdown_table(header, rows)


def heatmaps_command(patterns: Patterns, out: Path) -> str:
    """Layers x heads heatmaps of each probe's pattern at the base and last steps, and of its change
    (last - base, diverging colours). Writes `heatmap_<probe>_{base,last,change}.png` (a `/` in a merged
    probe name becomes `__`) and returns the list of files."""
    rows = []
    for probe in patterns.probes:
        base_step, base, last_step, last = patterns.base_and_last(probe)
        limits = pattern_limits([base, last])  # base and last in one colour scale, so they compare
        figures = {
            "base": pattern_heatmap(base, f"{probe}: step {base_step} (base)", limits),
            "last": pattern_heatmap(last, f"{probe}: step {last_step}", limits),
            "change": pattern_heatmap(last - base, f"{probe}: step {last_step} - step {base_step}",
                                      pattern_limits([last - base], diverging=True), diverging=True),
        }
        for kind, figure in figures.items():
            rows.append([probe, kind, save_figure(figure, out / f"heatmap_{probe.replace('/', '__')}_{kind}.png")])
    return markdown_table(["probe", "heatmap", "file"], rows)


def compose_command(
    patterns: Patterns, target: str, bases: Sequence[str], subset_size: int, out: Path | None = None,
    shares: bool = False,
) -> str:
    """Figure 4: R^2 of the target's pattern change fitted by every subset of `subset_size` bases' changes.

    With `shares`, the changes are of each head's share of its pattern's sum (`Patterns.change`). Writes
    `compose.csv` (rank, r2, bases, then `coefficient_<base>` per base, empty when not in the subset),
    `compose.md` and `compose.png` to `out` when given. The text says which probes' total score moved by more
    than 2x: their raw changes are mostly that scale (it follows the loss), and `shares` removes it.
    """
    patterns.require([target], "target probe")
    patterns.require(bases, "--bases probe")
    if target in bases:
        raise ValueError(f"target {target!r} is also in --bases; a probe trivially composes itself, remove it")
    if len(set(bases)) != len(bases):
        raise ValueError(f"--bases {' '.join(bases)} names a probe twice; pass each basis once")
    fits = stats.composition_search(patterns.change(target, shares),
                                    {name: patterns.change(name, shares) for name in bases}, subset_size)
    header = ["rank", "r2", "bases", *(f"{COEFFICIENT_PREFIX}{name}" for name in bases)]
    rows = [[rank, fit.r2, "+".join(fit.bases), *(fit.coefficients.get(name, "") for name in bases)]
            for rank, fit in enumerate(fits, start=1)]
    table = markdown_table(
        ["rank", "R^2", "coefficients"],
        [[rank, fit.r2, ", ".join(f"{name}={value:.4f}" for name, value in fit.coefficients.items())]
         for rank, fit in enumerate(fits, start=1)],
    )
    what = "shares of each pattern's sum (--shares)" if shares else "raw patterns"
    text = f"Target: {target}; changes of the {what}\n\n{table}"
    moved = [] if shares else [f"{name} x{scale:.3g}" for name in [target, *bases]
                               if not 0.5 <= (scale := patterns.scale_change(name)) <= 2]
    if moved:
        text += (f"\nTotal score, last step over base: {', '.join(moved)}. These changes are mostly that "
                 "overall scale, which follows each probe's loss; --shares fits where the score sits instead.")
    if out is not None:
        write_csv(out / "compose.csv", header, rows)
        atomic_write_text(out / "compose.md", text + "\n")
        save_figure(composition_figure(target, fits), out / "compose.png")
    return text
