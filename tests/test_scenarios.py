"""experiments/scenario1.py and scenario2.py: the training sets they build, and each command end to end on a
minimal budget (tables, results and plot written and consistent with each other)."""

import csv
import json
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from experiments.demo_runs import held_out, write_results
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


def run_scenario(module: str, out: Path, *options: str) -> None:
    command = [sys.executable, "-m", module, "--out", str(out), "--seeds", "0", "1", "--steps", "24",
               "--eval-rows", "8", *options]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def check_results(out: Path, conditions: list[str], steps: int) -> None:
    """table.csv, table.md, results.json and accuracy.png agree: last curve point per seed, mean and std."""
    results = json.loads((out / "results.json").read_text())
    assert list(results["curves"]) == conditions
    with open(out / "table.csv", newline="") as file:
        table = list(csv.DictReader(file))
    assert [row["condition"] for row in table] == conditions
    markdown = (out / "table.md").read_text()
    for row in table:
        curves = results["curves"][row["condition"]]
        assert len(curves) == 2 and all(curve[-1][0] == steps for curve in curves)
        assert [point[0] for point in curves[0]][-1] == steps
        finals, losses = [curve[-1][1] for curve in curves], [curve[-1][2] for curve in curves]
        assert all(0 <= value <= 1 for value in finals) and all(value > 0 for value in losses)
        assert [float(row["exact_match_seed_0"]), float(row["exact_match_seed_1"])] == finals
        assert float(row["exact_match_mean"]) == pytest.approx(statistics.mean(finals))
        assert float(row["exact_match_std"]) == pytest.approx(statistics.stdev(finals))
        assert float(row["loss_mean"]) == pytest.approx(statistics.mean(losses))
        assert float(row["loss_std"]) == pytest.approx(statistics.stdev(losses))
        assert (f"| {row['condition']} | {finals[0] / 2 + finals[1] / 2:.3f} ± {statistics.stdev(finals):.3f} |"
                in markdown)
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_results_tables_agree_with_the_curves(tmp_path):
    curves = {"a": [[[6, 0.5, 2.0], [24, 0.25, 1.5]], [[6, 0.0, 3.0], [24, 0.75, 1.0]]],
              "b": [[[6, 0.0, 4.0], [24, 0.125, 2.5]], [[6, 0.0, 4.0], [24, 0.125, 3.5]]]}
    table = write_results(tmp_path, "title", curves, {"seeds": [0, 1]})
    check_results(tmp_path, ["a", "b"], steps=24)
    assert "| a | 0.500 ± 0.354 | 0.250, 0.750 | 1.250 ± 0.354 |" in table
    assert "| b | 0.125 ± 0.000 | 0.125, 0.125 | 3.000 ± 0.707 |" in table


@pytest.mark.slow
def test_scenario1_end_to_end(tmp_path, compose_csv):
    out = tmp_path / "s1"
    run_scenario("experiments.scenario1", out, "--compose", str(compose_csv), "--complex-rows", "4",
                 "--basic-rows", "16")
    check_results(out, ["composed", "unrelated", "uniform", "complex"], steps=24)
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
def test_scenario2_end_to_end(tmp_path):
    out = tmp_path / "s2"
    run_scenario("experiments.scenario2", out, "--base-rows", "32", "--base-steps", "24", "--pool-per-task", "6",
                 "--target-rows", "4", "--k", "5")
    check_results(out, ["selected", "random"], steps=24)
    assert (out / "selecting_model" / "hf_export" / "config.json").is_file()
    for seed in (0, 1):
        pool = (out / f"seed{seed}" / "pool.jsonl").read_text().splitlines()
        selected = (out / f"seed{seed}" / "selected.jsonl").read_text().splitlines()
        assert len(pool) == 30 and len(selected) == 5 and set(selected) <= set(pool)
    composition = json.loads((out / "results.json").read_text())["settings"]["composition"]
    assert [row[:2] for row in composition] == [[0, "selected"], [0, "random"], [1, "selected"], [1, "random"]]
    assert all(sum(row[2:]) == 5 for row in composition)
    selected_rows = [json.loads(line) for line in (out / "seed0" / "selected.jsonl").read_text().splitlines()]
    counts = Counter(prefix(row) for row in selected_rows)
    assert composition[0][2:] == [counts["addition"], counts["reversal"], counts["sort"], counts["count"],
                                  counts["reversed_sum"]]
    assert "| 0 | selected |" in (out / "composition.md").read_text()
