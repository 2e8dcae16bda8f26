"""experiments/pretrain_base.py, scenario1.py and scenario2.py: the training sets they build, the paired
statistics, and each command end to end on a minimal budget (a tiny base pre-trained for 8 steps; tables,
results and plot written and consistent with each other)."""

import csv
import json
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from scipy import stats

from experiments.demo_runs import compare, detectable_difference, held_out, interval, write_results
from experiments.scenario1 import pair_coefficients, training_sets

ROOT = Path(__file__).parents[1]
COMPOSE_HEADER = "rank,r2,bases,coefficient_addition,coefficient_reversal,coefficient_sorting,coefficient_counting\n"


def prefix(row: dict) -> str:
    """The task a demo row belongs to, told independently of the generators: its prompt's form."""
    prompt = row["prompt"]
    if prompt.startswith("rev "):
        return "reversed_sum" if "+" in prompt else "reversal"
    return prompt.split()[0] if prompt.startswith(("sort ", "count ")) else "addition"


@pytest.fixture
def compose_csv(tmp_path):
    path = tmp_path / "compose.csv"
    path.write_text(COMPOSE_HEADER + "1,0.9,addition+reversal,0.75,0.25,,\n2,0.2,sorting+counting,,,2.0,-1.5\n")
    return path


def test_training_sets_share_complex_rows_and_mix_by_coefficients():
    mixtures = {"composed": {"addition": 0.75, "reversal": 0.25}, "unrelated": {"sorting": 2.0, "counting": -1.5}}
    sets = training_sets(seed=3, complex_rows=10, basic_rows=40, mixtures=mixtures)
    assert list(sets) == ["composed", "unrelated", "uniform", "complex"]
    by_task = {condition: Counter(prefix(row) for row in rows) for condition, rows in sets.items()}
    assert by_task["composed"] == {"reversed_sum": 10, "addition": 30, "reversal": 10}
    assert by_task["unrelated"] == {"reversed_sum": 10, "sort": 40}
    assert by_task["uniform"] == {"reversed_sum": 10, "addition": 10, "reversal": 10, "sort": 10, "count": 10}
    assert by_task["complex"] == {"reversed_sum": 10}
    complex_rows = [json.dumps(row, sort_keys=True) for row in sets["complex"]]
    for rows in sets.values():
        assert sorted(json.dumps(row, sort_keys=True) for row in rows if prefix(row) == "reversed_sum") == sorted(
            complex_rows)
    assert training_sets(3, 10, 40, mixtures) == sets  # reproducible from the seed
    assert training_sets(4, 10, 40, mixtures)["complex"] != sets["complex"]


def test_pair_coefficients_reads_the_named_fit(compose_csv):
    assert pair_coefficients(compose_csv, ("counting", "sorting")) == {"counting": -1.5, "sorting": 2.0}
    with pytest.raises(ValueError, match="no fit over addition\\+counting"):
        pair_coefficients(compose_csv, ("addition", "counting"))


def test_held_out_rows_avoid_training_prompts():
    first = held_out(50, set())
    rows = held_out(50, {row["prompt"] for row in first[:25]})
    prompts = [row["prompt"] for row in rows]
    assert len(set(prompts)) == 50 and not set(prompts) & {row["prompt"] for row in first[:25]}
    assert all(row["response"] == str(eval(row["prompt"][4:-1]))[::-1] for row in rows)


def run_module(module: str, *options: object) -> None:
    result = subprocess.run([sys.executable, "-m", module, *map(str, options)], capture_output=True, text=True,
                            cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny base from experiments/pretrain_base.py: 8 steps on the basic tasks, a 24-step probe run."""
    out = tmp_path_factory.mktemp("base")
    run_module("experiments.pretrain_base", "--out", out, "--rows-per-task", 40, "--addition-rows", 60, "--steps", 8,
               "--eval-rows", 8,
               "--probe-steps", 24, "--probe-rows", 6, "--bootstrap", 50)
    return out


def run_scenario(module: str, out: Path, base: Path, *options: object) -> None:
    run_module(module, "--out", out, "--base", base / "hf_export", "--seeds", 0, 1, "--steps", 24,
               "--eval-rows", 8, *options)


def check_results(out: Path, conditions: list[str], steps: int, pairs: list[tuple[str, str]]) -> None:
    """table.csv, comparisons.csv, table.md, results.json and accuracy.png agree: last curve point per seed,
    mean, t-interval, paired differences."""
    results = json.loads((out / "results.json").read_text())
    assert list(results["curves"]) == conditions
    with open(out / "table.csv", newline="") as file:
        table = list(csv.DictReader(file))
    assert [row["condition"] for row in table] == conditions
    markdown = (out / "table.md").read_text()
    finals = {}
    for row in table:
        curves = results["curves"][row["condition"]]
        assert len(curves) == 2 and all(curve[-1][0] == steps for curve in curves)
        finals[row["condition"]] = [curve[-1][1] for curve in curves]
        losses = [curve[-1][2] for curve in curves]
        accuracy = finals[row["condition"]]
        assert all(0 <= value <= 1 for value in accuracy) and all(value > 0 for value in losses)
        assert [float(row["exact_match_seed_0"]), float(row["exact_match_seed_1"])] == accuracy
        assert float(row["exact_match_mean"]) == pytest.approx(statistics.mean(accuracy))
        assert [float(row["exact_match_ci_low"]), float(row["exact_match_ci_high"])] == pytest.approx(
            interval(accuracy))
        assert float(row["loss_mean"]) == pytest.approx(statistics.mean(losses))
        assert float(row["loss_std"]) == pytest.approx(statistics.stdev(losses))
        assert f"| {row['condition']} | {statistics.mean(accuracy):.3f} [" in markdown
    with open(out / "comparisons.csv", newline="") as file:
        compared = list(csv.DictReader(file))
    assert [(row["first"], row["second"]) for row in compared] == pairs
    for row, (first, second) in zip(compared, pairs):
        difference = statistics.mean(finals[first]) - statistics.mean(finals[second])
        assert float(row["difference"]) == pytest.approx(difference)
        assert f"| {first} - {second} | {float(row['difference']):+.3f} [" in markdown
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_results_tables_agree_with_the_curves(tmp_path):
    curves = {"a": [[[6, 0.5, 2.0], [24, 0.25, 1.5]], [[6, 0.0, 3.0], [24, 0.75, 1.0]]],
              "b": [[[6, 0.0, 4.0], [24, 0.125, 2.5]], [[6, 0.0, 4.0], [24, 0.125, 3.5]]]}
    table = write_results(tmp_path, "title", curves, {"seeds": [0, 1]}, [("a", "b")])
    check_results(tmp_path, ["a", "b"], steps=24, pairs=[("a", "b")])
    assert "| a | 0.500 [-2.677, 3.677] | 0.250, 0.750 | 1.250 ± 0.354 |" in table  # 0.5 ± 12.706 * 0.25
    assert "| b | 0.125 [0.125, 0.125] | 0.125, 0.125 | 3.000 ± 0.707 |" in table
    assert "| a - b | +0.375 [-2.802, +3.552] |" in table


def test_paired_statistics():
    first, second = [0.50, 0.40, 0.60, 0.55, 0.45], [0.30, 0.35, 0.50, 0.40, 0.30]
    result = compare(first, second)
    differences = [0.20, 0.05, 0.10, 0.15, 0.15]
    assert result["difference"] == pytest.approx(0.13)
    half = stats.t.ppf(0.975, 4) * statistics.stdev(differences) / 5 ** 0.5
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((0.13 - half, 0.13 + half))
    assert result["t_p"] == pytest.approx(stats.ttest_1samp(differences, 0).pvalue)
    assert result["wilcoxon_p"] == pytest.approx(0.0625)  # 5 pairs, all one sign: the smallest two-sided p
    # the detectable difference: the paired t-test rejects it 80% of the time; large n -> (z_0.975 + z_0.8) sd/sqrt(n)
    shift = detectable_difference(1.0, 5) * 5 ** 0.5
    assert stats.nct.sf(stats.t.ppf(0.975, 4), 4, shift) == pytest.approx(0.8)
    assert detectable_difference(2.0, 5) == pytest.approx(2 * detectable_difference(1.0, 5))
    assert detectable_difference(1.0, 10_000) * 100 == pytest.approx(1.95996 + 0.84162, rel=1e-3)
    assert result["detectable"] == pytest.approx(detectable_difference(statistics.stdev(differences), 5))


@pytest.mark.slow
def test_pretrain_base_writes_a_reloadable_base(base):
    config = json.loads((base / "hf_export" / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"]) == (192, 4)
    accuracy = json.loads((base / "accuracy.json").read_text())
    assert set(accuracy) == {"addition", "reversal", "sorting", "counting", "reversed_sum"}
    assert all(0 <= value <= 1 for value in accuracy.values())
    for fit in ("compose", "compose_shares"):
        with open(base / fit / "compose.csv", newline="") as file:
            fits = list(csv.DictReader(file))
        assert len(fits) == 6 and fits[0]["rank"] == "1"  # every pair of the four basic tasks
    assert "changes of the shares" in (base / "compose_shares" / "compose.md").read_text()
    with open(base / "stats" / "stats_bootstrap.csv", newline="") as file:
        assert [row["probe"] for row in csv.DictReader(file)] == [
            "addition", "reversal", "sorting", "counting", "reversed_sum"]
    pretrained = [json.loads(line)["prompt"] for line in (base / "train.jsonl").read_text().splitlines()]
    assert not any("+" in prompt and prompt.startswith("rev ") for prompt in pretrained)  # no reversed_sum
    kinds = Counter("addition" if "+" in prompt else prompt.split()[0] for prompt in pretrained)
    assert kinds == {"addition": 60, "rev": 40, "sort": 40, "count": 40}  # --addition-rows 60, --rows-per-task 40


@pytest.mark.slow
def test_scenario1_end_to_end(tmp_path, compose_csv, base):
    out = tmp_path / "s1"
    run_scenario("experiments.scenario1", out, base, "--compose", compose_csv, "--complex-rows", 4,
                 "--basic-rows", 16)
    check_results(out, ["composed", "unrelated", "uniform", "complex"], steps=24,
                  pairs=[("composed", "uniform"), ("composed", "complex"), ("composed", "unrelated")])
    curve = json.loads((out / "results.json").read_text())["curves"]["composed"][0]
    assert [point[0] for point in curve] == [6, 12, 18, 24]  # every quarter of the budget
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings["basic_rows_by_condition"] == {"composed": {"addition": 12, "reversal": 4},
                                                   "unrelated": {"sorting": 16}}
    held = [json.loads(line) for line in (out / "held_out.jsonl").read_text().splitlines()]
    trained = {json.loads(line)["prompt"] for path in out.glob("seed*/*/train.jsonl")
               for line in path.read_text().splitlines()}
    assert len(held) == 8 and not {row["prompt"] for row in held} & trained


@pytest.mark.slow
def test_scenario2_end_to_end(tmp_path, base):
    out = tmp_path / "s2"
    run_scenario("experiments.scenario2", out, base, "--pool-per-task", 6, "--target-rows", 4, "--k", 3, 5)
    conditions = ["selected_k3", "random_k3", "selected_k5", "random_k5"]
    check_results(out, conditions, steps=24, pairs=[("selected_k3", "random_k3"), ("selected_k5", "random_k5")])
    for seed in (0, 1):
        pool = (out / f"seed{seed}" / "pool.jsonl").read_text().splitlines()
        selected = (out / f"seed{seed}" / "selected.jsonl").read_text().splitlines()
        assert len(pool) == 30 and len(selected) == 5 and set(selected) <= set(pool)
        for k in (3, 5):  # the k best of the one ranking
            assert (out / f"seed{seed}" / f"selected_k{k}" / "train.jsonl").read_text().splitlines() == [
                json.dumps(json.loads(line)) for line in selected[:k]]
    composition = json.loads((out / "results.json").read_text())["settings"]["composition"]
    assert [row[:2] for row in composition] == [[seed, condition] for seed in (0, 1) for condition in conditions]
    assert all(sum(row[2:]) == int(row[1].split("_k")[1]) for row in composition)
    selected_rows = [json.loads(line) for line in (out / "seed0" / "selected.jsonl").read_text().splitlines()[:3]]
    counts = Counter(prefix(row) for row in selected_rows)
    assert composition[0][2:] == [counts["addition"], counts["reversal"], counts["sort"], counts["count"],
                                  counts["reversed_sum"]]
    assert "| 0 | selected_k5 |" in (out / "composition.md").read_text()
