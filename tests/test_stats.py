"""lightning_sft.stats against computations written out by hand with numpy."""

import numpy as np
import pytest

from lightning_sft import stats


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_gini_matches_mean_absolute_difference(rng):
    pattern = rng.gamma(0.5, size=(4, 8))
    values = pattern.ravel()
    expected = np.abs(values[:, None] - values[None, :]).sum() / (2 * values.size**2 * values.mean())
    assert stats.gini(pattern) == pytest.approx(expected, rel=1e-12)
    assert stats.gini(np.ones(10)) == pytest.approx(0.0, abs=1e-15)
    assert stats.gini([0, 0, 0, 1]) == pytest.approx(0.75)  # one active head of four: (n - 1) / n


def test_coefficient_of_variation_uses_population_std(rng):
    values = rng.gamma(2.0, size=50)
    mean = values.sum() / values.size
    expected = np.sqrt(((values - mean) ** 2).sum() / values.size) / mean
    assert stats.coefficient_of_variation(values) == pytest.approx(expected, rel=1e-12)


def test_kurtosis_is_pearson_not_excess(rng):
    values = rng.standard_t(5, size=200)
    centered = values - values.mean()
    expected = np.mean(centered**4) / np.mean(centered**2) ** 2
    assert stats.kurtosis(values) == pytest.approx(expected, rel=1e-12)
    assert stats.kurtosis([0, 1]) == pytest.approx(1.0)  # two-point distribution: m4 / m2^2 = 1
    assert stats.kurtosis(rng.normal(size=200_000)) == pytest.approx(3.0, abs=0.05)


def test_pearson_and_mse(rng):
    a, b = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    x, y = a.ravel() - a.mean(), b.ravel() - b.mean()
    assert stats.pearson(a, b) == pytest.approx(x @ y / np.sqrt((x @ x) * (y @ y)), rel=1e-12)
    assert stats.pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert stats.mse(a, b) == pytest.approx(sum((p - q) ** 2 for p, q in zip(a.ravel(), b.ravel())) / 15)


def test_change_correlation_matrix(rng):
    changes = {"gsm8k": rng.normal(size=(2, 4)), "math": rng.normal(size=(2, 4)), "arc": rng.normal(size=(2, 4))}
    names, matrix = stats.change_correlation(changes)
    assert names == ["gsm8k", "math", "arc"]
    for i, first in enumerate(names):
        for j, second in enumerate(names):
            x = changes[first].ravel() - changes[first].mean()
            y = changes[second].ravel() - changes[second].mean()
            assert matrix[i, j] == pytest.approx(x @ y / np.linalg.norm(x) / np.linalg.norm(y), rel=1e-12)


def test_composition_fit_matches_normal_equations(rng):
    bases = {name: rng.normal(size=(3, 4)) for name in ("a", "b", "c")}
    target = 0.7 * bases["a"] - 0.2 * bases["c"] + 0.1 * rng.normal(size=(3, 4)) + 0.05
    design = np.stack([basis.ravel() for basis in bases.values()], axis=1)
    y = target.ravel()
    beta = np.linalg.solve(design.T @ design, design.T @ y)  # no intercept column
    residual = y - design @ beta
    expected_r2 = 1 - (residual @ residual) / ((y - y.mean()) @ (y - y.mean()))
    fit = stats.composition_fit(target, bases)
    assert fit.bases == ("a", "b", "c")
    assert [fit.coefficients[name] for name in "abc"] == pytest.approx(beta, rel=1e-9)
    assert fit.r2 == pytest.approx(expected_r2, rel=1e-9)
    exact = stats.composition_fit(2 * bases["a"] + bases["b"], bases)
    assert exact.r2 == pytest.approx(1.0) and exact.coefficients["a"] == pytest.approx(2.0)


def test_composition_search_ranks_every_subset(rng):
    bases = {name: rng.normal(size=(4, 4)) for name in ("a", "b", "c", "d")}
    target = bases["b"] + 0.5 * bases["d"] + 0.01 * rng.normal(size=(4, 4))
    fits = stats.composition_search(target, bases, 2)
    assert len(fits) == 6
    assert {fit.bases for fit in fits} == {(x, y) for i, x in enumerate("abcd") for y in "abcd"[i + 1:]}
    assert fits[0].bases == ("b", "d")
    assert [fit.r2 for fit in fits] == sorted((fit.r2 for fit in fits), reverse=True)
    for fit in fits:
        assert fit.r2 == pytest.approx(stats.composition_fit(target, {n: bases[n] for n in fit.bases}).r2)
    with pytest.raises(ValueError, match="subset_size=5 but there are 4 bases"):
        stats.composition_search(target, bases, 5)


def test_select_by_pattern_ranks_by_correlation(rng):
    target = rng.gamma(1.0, size=(2, 3))
    candidates = rng.gamma(1.0, size=(6, 2, 3))
    candidates[4] = 3 * target + 1  # correlation 1
    candidates[1] = target + 0.3 * rng.normal(size=(2, 3))
    correlations = [np.corrcoef(candidate.ravel(), target.ravel())[0, 1] for candidate in candidates]
    chosen = stats.select_by_pattern(candidates, target, 3)
    assert chosen.dtype == np.int64
    assert chosen.tolist() == sorted(range(6), key=lambda i: -correlations[i])[:3]
    assert chosen[0] == 4
    assert stats.pattern_correlations(candidates, target) == pytest.approx(correlations, rel=1e-12)
    with pytest.raises(ValueError, match="k=7 but there are 6 candidates"):
        stats.select_by_pattern(candidates, target, 7)
    with pytest.raises(ValueError, match=r"candidates have shape \(6, 2, 3\), target has shape \(3, 2\)"):
        stats.select_by_pattern(candidates, target.T, 2)
    candidates[2] = 0.5
    with pytest.raises(ValueError, match=r"candidates \[2\] have constant patterns"):
        stats.select_by_pattern(candidates, target, 2)


def test_mixture_counts_largest_remainder():
    counts = stats.mixture_counts({"a": 0.5, "b": -0.3, "c": 0.3, "d": 0.2, "e": 0.1}, total=10, top_k=3)
    # top 3 positive: a, c, d with weights 0.5, 0.3, 0.2 of 1.0 -> 5, 3, 2
    assert counts == {"a": 5, "c": 3, "d": 2}
    assert list(counts) == ["a", "c", "d"]
    counts = stats.mixture_counts({"a": 1.0, "b": 1.0, "c": 1.0}, total=100, top_k=3)
    # quotas 33.33 each: floors 33 + one leftover row to the first of the tied remainders
    assert counts == {"a": 34, "b": 33, "c": 33}
    counts = stats.mixture_counts({"x": 0.61, "y": 0.29, "z": 0.1}, total=7, top_k=5)
    # quotas 4.27, 2.03, 0.70: floors 4 + 2 + 0, the leftover row goes to the largest remainder (z)
    assert counts == {"x": 4, "y": 2, "z": 1}
    assert sum(stats.mixture_counts({"p": 0.123, "q": 0.456, "r": 0.789}, 1001, 3).values()) == 1001


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: stats.pearson(np.ones(4), np.arange(4.0)), "a is constant"),
        (lambda: stats.pearson(np.ones((2, 3)), np.ones((3, 2))), r"a has shape \(2, 3\), b has shape \(3, 2\)"),
        (lambda: stats.mse(np.ones(3), np.ones(4)), r"a has shape \(3,\), b has shape \(4,\)"),
        (lambda: stats.gini(np.zeros(5)), "every score is 0"),
        (lambda: stats.gini([1.0, -0.5, 2.0]), "non-negative"),
        (lambda: stats.gini([1.0, np.nan]), "NaN"),
        (lambda: stats.coefficient_of_variation(np.zeros(3)), "mean 0"),
        (lambda: stats.kurtosis(np.full(6, 2.0)), "constant"),
        (lambda: stats.change_correlation({"a": np.ones(4), "b": np.arange(4.0)}), "pattern 'a' is constant"),
        (lambda: stats.change_correlation({"a": np.ones(4), "b": np.ones(5)}),
         r"'a' has shape \(4,\), 'b' has shape \(5,\)"),
        (lambda: stats.composition_fit(np.ones(4), {"a": np.arange(4.0)}), "target is constant"),
        (lambda: stats.composition_fit(np.arange(4.0), {"a": np.ones(5)}),
         r"target has shape \(4,\), basis 'a' has shape \(5,\)"),
        (lambda: stats.mixture_counts({"a": 1.0}, 10, 0), "top_k=0"),
        (lambda: stats.mixture_counts({"a": -1.0, "b": 0.0}, 10, 2), "no positive coefficient"),
        (lambda: stats.mixture_counts({"a": 1.0}, 0, 1), "total=0"),
    ],
)
def test_undefined_inputs_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_bootstrap_table1_values_and_intervals(rng):
    base = rng.gamma(2.0, size=(40, 2, 4))
    base[:, 0, 0] += 3.0  # one dominant head
    last = np.abs(base + rng.normal(0, 0.5, size=base.shape))
    table = stats.bootstrap_table1(base, last, resamples=300)
    before, after = base.mean(axis=0), last.mean(axis=0)
    for name, function in stats.CONCENTRATION.items():
        assert table[f"{name}_base"][0] == pytest.approx(function(before))
        assert table[f"{name}_last"][0] == pytest.approx(function(after))
        assert table[f"{name}_change"][0] == pytest.approx(function(after) - function(before))
    assert table["pearson_drift"][0] == pytest.approx(stats.pearson(before, after))
    assert all(low < high for _, low, high in table.values())
    assert stats.bootstrap_table1(base, last, resamples=300) == table  # reproducible from the seed
    wide = stats.bootstrap_table1(base[:10], last[:10], resamples=300)
    narrow = stats.bootstrap_table1(np.tile(base, (8, 1, 1)), np.tile(last, (8, 1, 1)), resamples=300)
    for name in ("gini_base", "cv_change", "pearson_drift"):  # more rows, less sampling noise
        assert narrow[name][2] - narrow[name][1] < (wide[name][2] - wide[name][1]) / 2


def test_bootstrap_table1_without_noise(rng):
    row = rng.gamma(2.0, size=(1, 2, 4))
    same = np.repeat(row, 12, axis=0)  # every probe row the same: no sampling noise
    table = stats.bootstrap_table1(same, same * 2, resamples=50)
    for name, (value, low, high) in table.items():
        assert low == pytest.approx(value) and high == pytest.approx(value), name
    assert table["gini_change"][0] == pytest.approx(0.0) and table["pearson_drift"][0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same probe rows"):
        stats.bootstrap_table1(same, same[:5])
