"""Statistics of head-activation patterns: concentration, drift, similarity, composition, mixing, selection.

Pure numpy/scipy: array-likes in, floats and arrays out; no torch, no Lightning, no I/O. A pattern is a
`[num_layers, num_heads]` array of head-activation scores; every statistic here flattens it over all heads.
"""

from dataclasses import dataclass
from itertools import combinations
from typing import Mapping

import numpy as np
import scipy.linalg
import scipy.stats
from numpy.typing import ArrayLike


def _flat(x: ArrayLike, name: str, *, min_size: int = 1) -> np.ndarray:
    """`x` flattened to float64, checked to be finite and to hold at least `min_size` values."""
    values = np.asarray(x, dtype=np.float64).ravel()
    if values.size < min_size:
        raise ValueError(f"{name} has {values.size} values; pass an array with at least {min_size}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} contains NaN or infinite values; pass finite scores")
    return values


def _same_shape(a: ArrayLike, b: ArrayLike, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(
            f"shape mismatch: {names[0]} has shape {a.shape}, {names[1]} has shape {b.shape}; "
            "compare patterns of the same model ([num_layers, num_heads])"
        )
    return _flat(a, names[0], min_size=2), _flat(b, names[1], min_size=2)


def _require_varying(values: np.ndarray, name: str) -> None:
    if np.ptp(values) == 0:
        raise ValueError(
            f"{name} is constant (every value is {values[0]:g}); the statistic is undefined for it, "
            "pass a pattern whose heads differ"
        )


def gini(x: ArrayLike) -> float:
    """Gini coefficient of non-negative scores, in [0, 1): 0 when all heads are equally active.

    G = sum_ij |x_i - x_j| / (2 n^2 mean(x)), computed from the sorted values in O(n log n).
    """
    values = np.sort(_flat(x, "x"))
    if values[0] < 0:
        raise ValueError(f"gini needs non-negative scores, got minimum {values[0]:g}; pass absolute scores")
    total = values.sum()
    if total == 0:
        raise ValueError("gini is undefined when every score is 0; pass a pattern with some activation")
    n = values.size
    rank = np.arange(1, n + 1)
    return float(np.sum((2 * rank - n - 1) * values) / (n * total))


def coefficient_of_variation(x: ArrayLike) -> float:
    """std(x) / mean(x) with the population std (ddof=0)."""
    values = _flat(x, "x")
    mean = values.mean()
    if mean == 0:
        raise ValueError("coefficient of variation is undefined for mean 0; pass a pattern with some activation")
    return float(values.std() / mean)


def kurtosis(x: ArrayLike) -> float:
    """Pearson's kurtosis m4 / m2^2 (NOT excess: a normal distribution gives 3, heavier tails give more)."""
    values = _flat(x, "x", min_size=2)
    _require_varying(values, "x")
    return float(scipy.stats.kurtosis(values, fisher=False, bias=True))


def pearson(a: ArrayLike, b: ArrayLike) -> float:
    """Pearson correlation of two patterns of the same shape (drift vs the base pattern, similarity)."""
    a, b = _same_shape(a, b, ("a", "b"))
    _require_varying(a, "a")
    _require_varying(b, "b")
    return float(scipy.stats.pearsonr(a, b).statistic)


def mse(a: ArrayLike, b: ArrayLike) -> float:
    """Mean squared difference of two patterns of the same shape."""
    a, b = _same_shape(a, b, ("a", "b"))
    return float(np.mean((a - b) ** 2))


def change_correlation(changes: Mapping[str, ArrayLike]) -> tuple[list[str], np.ndarray]:
    """Pearson correlation matrix `[P, P]` of named patterns (Figure 2), rows/columns in the mapping's order.

    Made for pattern changes (after - before) across probe sets, but any same-shaped patterns work.
    """
    if not changes:
        raise ValueError("change_correlation got no patterns; pass {probe name: pattern change}")
    names = list(changes)
    shapes = {name: np.shape(changes[name]) for name in names}
    first = names[0]
    for name in names[1:]:
        if shapes[name] != shapes[first]:
            raise ValueError(
                f"shape mismatch: {first!r} has shape {shapes[first]}, {name!r} has shape {shapes[name]}; "
                "pass patterns of the same model"
            )
    rows = np.stack([_flat(changes[name], name, min_size=2) for name in names])
    for name, row in zip(names, rows):
        _require_varying(row, f"pattern {name!r}")
    return names, np.corrcoef(rows)


@dataclass(frozen=True)
class CompositionFit:
    """A least-squares fit target ~ sum_b coefficient_b * basis_b without intercept (Eq. 3, 10).

    `coefficients` maps each basis name, in the order given, to its weight; `r2` = 1 - SSE / SST with SST
    about the target's mean, so a fit no better than the target's mean scores <= 0.
    """

    coefficients: dict[str, float]
    r2: float

    @property
    def bases(self) -> tuple[str, ...]:
        return tuple(self.coefficients)


def composition_fit(target: ArrayLike, bases: Mapping[str, ArrayLike]) -> CompositionFit:
    """Fit the target's pattern change as a linear combination of the bases' changes (Eq. 3, 10)."""
    if not bases:
        raise ValueError("composition_fit got no bases; pass {name: pattern change} with at least one entry")
    target_shape = np.shape(target)
    for name, basis in bases.items():
        if np.shape(basis) != target_shape:
            raise ValueError(
                f"shape mismatch: target has shape {target_shape}, basis {name!r} has shape {np.shape(basis)}; "
                "pass changes of the same model"
            )
    y = _flat(target, "target", min_size=2)
    _require_varying(y, "target")
    design = np.stack([_flat(basis, name) for name, basis in bases.items()], axis=1)  # [L*H, B]
    coefficients, *_ = scipy.linalg.lstsq(design, y)
    residual = y - design @ coefficients
    r2 = 1.0 - float(residual @ residual) / float(np.sum((y - y.mean()) ** 2))
    return CompositionFit(dict(zip(bases, map(float, coefficients))), r2)


def composition_search(
    target: ArrayLike, bases: Mapping[str, ArrayLike], subset_size: int
) -> list[CompositionFit]:
    """`composition_fit` for every subset of `subset_size` bases, best R^2 first (Figure 4).

    Ties keep the order of `itertools.combinations` over the bases as given.
    """
    if not 1 <= subset_size <= len(bases):
        raise ValueError(
            f"subset_size={subset_size} but there are {len(bases)} bases ({', '.join(bases)}); "
            f"pass a subset size between 1 and {len(bases)}"
        )
    fits = [
        composition_fit(target, {name: bases[name] for name in subset})
        for subset in combinations(bases, subset_size)
    ]
    return sorted(fits, key=lambda fit: -fit.r2)


def pattern_correlations(candidates: ArrayLike, target: ArrayLike) -> np.ndarray:
    """Pearson correlation `[N]` of each candidate's pattern (`candidates` `[N, ...]`) with `target` `[...]`."""
    candidates = np.asarray(candidates, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if candidates.ndim < 1 or candidates.shape[1:] != target.shape:
        raise ValueError(
            f"shape mismatch: candidates have shape {candidates.shape}, target has shape {target.shape}; "
            "pass candidates as [N, *target.shape]"
        )
    rows = candidates.reshape(len(candidates), -1)
    y = _flat(target, "target", min_size=2)
    _require_varying(y, "target")
    if not np.all(np.isfinite(rows)):
        bad = np.flatnonzero(~np.all(np.isfinite(rows), axis=1))
        raise ValueError(f"candidates {bad[:10].tolist()} contain NaN or infinite values; pass finite scores")
    centered = rows - rows.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centered, axis=1)
    constant = np.flatnonzero(norms == 0)
    if constant.size:
        raise ValueError(
            f"candidates {constant[:10].tolist()} have constant patterns, so their correlation is undefined; "
            "drop them before ranking"
        )
    y_centered = y - y.mean()
    return centered @ y_centered / (norms * np.linalg.norm(y_centered))


def select_by_pattern(candidates: ArrayLike, target: ArrayLike, k: int) -> np.ndarray:
    """Indices `[k]` int64 of the `k` candidates whose pattern correlates best with the target's (Eq. 5).

    `candidates` `[N, ...]` are per-example patterns, `target` `[...]` the target set's pattern. Best first;
    ties keep the lower index first.
    """
    correlations = pattern_correlations(candidates, target)
    if not 1 <= k <= len(correlations):
        raise ValueError(f"k={k} but there are {len(correlations)} candidates; pass 1 <= k <= {len(correlations)}")
    return np.argsort(-correlations, kind="stable")[:k].astype(np.int64)


def mixture_counts(coefficients: Mapping[str, float], total: int, top_k: int) -> dict[str, int]:
    """Rows to draw per dataset (Eq. 4): the `top_k` largest positive coefficients, counts proportional.

    Counts sum exactly to `total` (largest-remainder rounding; ties go to the larger coefficient, then to
    the earlier name). Returned best coefficient first; datasets not chosen are absent.
    """
    if top_k < 1:
        raise ValueError(f"top_k={top_k}; pass top_k >= 1 (the number of datasets to mix)")
    if total < 1:
        raise ValueError(f"total={total}; pass the number of rows to draw (>= 1)")
    for name, value in coefficients.items():
        if not np.isfinite(value):
            raise ValueError(f"coefficient {name}={value} is not finite; pass finite coefficients")
    positive = [(name, float(value)) for name, value in coefficients.items() if value > 0]
    if not positive:
        raise ValueError(
            f"no positive coefficient in {dict(coefficients)}; mixing needs at least one dataset whose "
            "coefficient is > 0 (check the sign of the composition fit)"
        )
    chosen = sorted(positive, key=lambda item: -item[1])[:top_k]  # sorted() is stable: ties keep name order
    weights = np.array([value for _, value in chosen])
    quotas = total * weights / weights.sum()
    counts = np.floor(quotas).astype(np.int64)
    remainder = total - int(counts.sum())
    by_fraction = np.argsort(-(quotas - counts), kind="stable")
    counts[by_fraction[:remainder]] += 1
    return {name: int(count) for (name, _), count in zip(chosen, counts)}


CONCENTRATION = {"gini": gini, "cv": coefficient_of_variation, "kurtosis": kurtosis}


def bootstrap_table1(base: ArrayLike, last: ArrayLike, resamples: int = 1000, level: float = 0.95,
                     seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """Table 1's statistics with percentile bootstrap intervals over probe rows.

    `base`, `last`: per-example patterns [N, L, H] of the same N probe rows at the base and the last step; each
    resample draws N rows with replacement (the same rows at both steps) and averages them into the two
    patterns. Returns {name: (value on all rows, low, high)} for `gini_base`, `gini_last`, `gini_change`
    (last - base), likewise `cv_*` and `kurtosis_*`, and `pearson_drift` (Pearson of base and last).
    """
    base, last = np.asarray(base, dtype=np.float64), np.asarray(last, dtype=np.float64)
    if base.ndim != 3 or base.shape != last.shape or len(base) < 2:
        raise ValueError(f"per-example patterns of shapes {base.shape} and {last.shape}; pass two [N, L, H] "
                         "arrays of the same probe rows, N >= 2")

    def table(rows: np.ndarray) -> np.ndarray:
        before, after = base[rows].mean(axis=0), last[rows].mean(axis=0)
        values = []
        for function in CONCENTRATION.values():
            values += [function(before), function(after), function(after) - function(before)]
        return np.array([*values, pearson(before, after)])

    names = [f"{name}_{which}" for name in CONCENTRATION for which in ("base", "last", "change")] + ["pearson_drift"]
    rows = np.arange(len(base))
    result = scipy.stats.bootstrap((rows,), lambda sample: table(sample.astype(int)), vectorized=False,
                                   n_resamples=resamples, confidence_level=level, method="percentile",
                                   random_state=np.random.default_rng(seed))
    interval = result.confidence_interval
    return {name: (float(value), float(low), float(high))
            for name, value, low, high in zip(names, table(rows), interval.low, interval.high)}
