"""`python -m lightning_sft.analysis`: every command on the patterns that HeadActivationCallback saved
during two real tiny fits, outputs read back and checked against numpy computations."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import matplotlib.image
import numpy as np
import pytest
import safetensors.torch
import torch
from torch.utils.data import DataLoader
from transformers import LlamaForCausalLM

from callbacks import HeadActivationCallback
from lightning_sft.data.adapters import ADAPTERS
from lightning_sft.analysis.__main__ import main
from lightning_sft.analysis.commands import compose_command
from lightning_sft.analysis.runs import Patterns
from lightning_sft.data import collate, tokenize_rows
from lightning_sft import stats
from lightning_sft.storage import load_patterns, save_pattern
from tests.conftest import tiny_llama_config

DATA = Path(__file__).parents[1] / "data" / "benchmarks"
FILES = {"gsm8k": "gsm8k.jsonl", "math": "math.jsonl", "arc": "arc_challenge.jsonl",
         "winogrande": "winogrande.jsonl", "mmlu": "mmlu.jsonl"}
STEPS = (0, 1, 2, 4)
# Two fine-tuning runs of one model, each probing three tasks; both probe gsm8k.
RUNS = {"gsm8k_task/version_0": ("gsm8k", "arc", "winogrande"), "math_task/version_0": ("math", "mmlu", "gsm8k")}


def _short_rows(task: str, count: int, start: int = 0) -> list[dict]:
    """Prompt/response rows cut short from a benchmark file, so that tiny models score them in milliseconds."""
    rows = [ADAPTERS[task](json.loads(line)) for line in (DATA / FILES[task]).read_text().splitlines()]
    return [{"id": f"{task}-{i}", "prompt": rows[i]["prompt"][:30], "response": rows[i]["response"][:20]}
            for i in range(start, start + count)]


def _probe_batch(tokenizer, task: str) -> dict:
    return collate(tokenize_rows(_short_rows(task, 3), tokenizer, max_length=64), tokenizer.pad_token_id)


class _TinySFT(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = LlamaForCausalLM(tiny_llama_config())

    def training_step(self, batch, batch_idx):
        return self.model(**batch).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=2e-2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer):
    """Two real tiny fits with HeadActivationCallback, saved under `<root>/<run>/head_patterns`;
    returns (root, {run label: {probe: {step: float64 [2, 4]}}}) as read back from disk."""
    root = tmp_path_factory.mktemp("logs")
    scored = {}
    for run, probes in RUNS.items():
        task = run.split("_")[0]
        train = tokenize_rows(_short_rows(task, 16, start=10), tokenizer, max_length=64)
        loader = DataLoader(train, batch_size=4, collate_fn=lambda rows: collate(rows, tokenizer.pad_token_id))
        callback = HeadActivationCallback(
            {probe: tokenize_rows(_short_rows(probe, 3), tokenizer, max_length=64) for probe in probes},
            steps=list(STEPS), save_dir=str(root / run / "head_patterns"), log_images=False,
        )
        trainer = L.Trainer(max_steps=STEPS[-1], accelerator="cpu", logger=False, enable_checkpointing=False,
                            callbacks=[callback], enable_progress_bar=False, enable_model_summary=False)
        with pytest.warns(UserWarning, match="no logger"):
            trainer.fit(_TinySFT(), loader)
        scored[run] = {probe: {step: pattern.double().numpy() for step, pattern in steps.items()}
                       for probe, steps in load_patterns(root / run / "head_patterns").items()}
        assert all(sorted(steps) == list(STEPS) for steps in scored[run].values())
    return root, scored


def _merged(scored) -> dict[str, dict[int, np.ndarray]]:
    """The names the analysis gives: gsm8k is in both runs, so it is prefixed by its run."""
    return {(f"{run}/{probe}" if probe == "gsm8k" else probe): steps
            for run, probes in scored.items() for probe, steps in probes.items()}


def _canonical(path: Path) -> list[str]:
    """Each JSONL row as JSON with sorted keys, to compare rows whatever their key order."""
    return [json.dumps(json.loads(line), sort_keys=True) for line in path.read_text().splitlines()]


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def _run(capsys, *argv) -> str:
    main([str(arg) for arg in argv])
    return capsys.readouterr().out


def _fails(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in argv])
    assert exit_info.value.code == 1
    return capsys.readouterr().err


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    x, y = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(x @ y / np.sqrt((x @ x) * (y @ y)))


def test_stats_table(runs, capsys, tmp_path):
    root, scored = runs
    printed = _run(capsys, "stats", root / "gsm8k_task/version_0", "--out", tmp_path)
    rows = _read_csv(tmp_path / "stats.csv")
    assert [row["probe"] for row in rows] == ["gsm8k", "arc", "winogrande"]
    for row in rows:
        steps = scored["gsm8k_task/version_0"][row["probe"]]
        assert (int(row["base_step"]), int(row["last_step"])) == (0, 4)
        for when, pattern in (("base", steps[0]), ("last", steps[4])):
            values = pattern.ravel()
            gini = np.abs(values[:, None] - values[None, :]).sum() / (2 * values.size**2 * values.mean())
            centered = values - values.mean()
            assert float(row[f"gini_{when}"]) == pytest.approx(gini, rel=1e-9)
            assert float(row[f"cv_{when}"]) == pytest.approx(values.std() / values.mean(), rel=1e-9)
            assert float(row[f"kurtosis_{when}"]) == pytest.approx(
                np.mean(centered**4) / np.mean(centered**2) ** 2, rel=1e-9)
    assert (tmp_path / "stats.md").read_text() in printed
    assert printed.splitlines()[0].startswith("| probe | base_step | last_step | gini_base")
    assert f"| arc | 0 | 4 | {float(rows[1]['gini_base']):.4f} |" in printed


def test_similarity_heatmaps(runs, capsys, tmp_path):
    root, scored = runs
    _run(capsys, "similarity", *(root / run for run in RUNS), "--out", tmp_path)
    merged = _merged(scored)
    names = list(merged)
    assert "gsm8k_task/version_0/gsm8k" in names and "math_task/version_0/gsm8k" in names
    expected = {
        "change": {name: steps[4] - steps[0] for name, steps in merged.items()},
        "base": {name: steps[0] for name, steps in merged.items()},
        "last": {name: steps[4] for name, steps in merged.items()},
    }
    for kind, patterns in expected.items():
        rows = _read_csv(tmp_path / f"similarity_{kind}.csv")
        assert [row["probe"] for row in rows] == names
        for row in rows:
            for column in names:
                assert float(row[column]) == pytest.approx(_pearson(patterns[row["probe"]], patterns[column]),
                                                           abs=1e-12)
        image = matplotlib.image.imread(tmp_path / f"similarity_{kind}.png")
        assert image.shape == (round(100 * (1.6 + 0.8 * 6)), round(100 * (2.0 + 0.9 * 6)), 4)
    # Both runs start from the same base model, so gsm8k's base pattern is the same in both.
    base = _read_csv(tmp_path / "similarity_base.csv")
    assert float(base[0]["math_task/version_0/gsm8k"]) == pytest.approx(1.0)


def test_drift_curves(runs, capsys, tmp_path):
    root, scored = runs
    printed = _run(capsys, "drift", *(root / run for run in RUNS), "--out", tmp_path)
    merged = _merged(scored)
    rows = _read_csv(tmp_path / "drift.csv")
    assert [(row["probe"], int(row["step"])) for row in rows] == [(p, s) for p in merged for s in STEPS]
    for row in rows:
        steps = merged[row["probe"]]
        pattern, base = steps[int(row["step"])], steps[0]
        assert float(row["pearson"]) == pytest.approx(_pearson(pattern, base), abs=1e-12)
        assert float(row["mse"]) == pytest.approx(np.mean((pattern - base) ** 2), rel=1e-9, abs=1e-30)
    assert float(rows[3]["pearson"]) < 1.0 and float(rows[3]["mse"]) > 0
    assert "| arc | 4 |" in printed
    assert matplotlib.image.imread(tmp_path / "drift.png").shape[1] == 680  # 3.4 inches at 200 dpi


def test_before_after_heatmaps(runs, capsys, tmp_path):
    root, scored = runs
    printed = _run(capsys, "heatmaps", *(root / run for run in RUNS), "--out", tmp_path)
    merged = _merged(scored)
    images = {}
    for probe in merged:
        for kind in ("base", "last", "change"):
            path = tmp_path / f"heatmap_{probe.replace('/', '__')}_{kind}.png"
            assert str(path) in printed
            images[probe, kind] = matplotlib.image.imread(path)
            assert images[probe, kind].shape[:2] == (round(100 * (1.3 + 0.4 * 2)), round(100 * 4.0))
    # Base and last share one colour scale (so they compare): the colour bars (right of x = 2.9 inch, below
    # the 0.35-inch title) are the same picture, the cells are not.
    for probe in merged:
        base, last = images[probe, "base"][36:], images[probe, "last"][36:]
        assert np.array_equal(base[:, 290:], last[:, 290:])
        assert not np.array_equal(base[:, :290], last[:, :290])


def test_compose_ranks_every_subset(runs, capsys, tmp_path):
    root, scored = runs
    merged = _merged(scored)
    bases = ["arc", "winogrande", "mmlu"]
    printed = _run(capsys, "compose", *(root / run for run in RUNS), "--target", "math", "--bases", *bases,
                   "--subset-size", 2, "--out", tmp_path)
    rows = _read_csv(tmp_path / "compose.csv")
    assert len(rows) == 3 and [int(row["rank"]) for row in rows] == [1, 2, 3]
    y = (merged["math"][4] - merged["math"][0]).ravel()
    r2 = [float(row["r2"]) for row in rows]
    assert r2 == sorted(r2, reverse=True)
    for row in rows:
        subset = row["bases"].split("+")
        design = np.stack([(merged[name][4] - merged[name][0]).ravel() for name in subset], axis=1)
        beta = np.linalg.solve(design.T @ design, design.T @ y)
        residual = y - design @ beta
        assert float(row["r2"]) == pytest.approx(1 - residual @ residual / np.sum((y - y.mean()) ** 2), rel=1e-6)
        for name in bases:
            cell = row[f"coefficient_{name}"]
            if name in subset:
                assert float(cell) == pytest.approx(beta[subset.index(name)], rel=1e-6)
            else:
                assert cell == ""
    assert printed.startswith("Target: math") and (tmp_path / "compose.md").read_text() in printed
    image = matplotlib.image.imread(tmp_path / "compose.png")
    assert image.shape == (round(100 * (1.2 + 0.32 * 3)), 750, 4)


def test_compose_shares_fits_each_heads_share_of_the_sum(runs, capsys, tmp_path):
    root, scored = runs
    merged = _merged(scored)
    _run(capsys, "compose", *(root / run for run in RUNS), "--target", "math", "--bases", "arc", "mmlu",
         "--subset-size", 2, "--shares", "--out", tmp_path)
    [row] = _read_csv(tmp_path / "compose.csv")

    def share_change(name: str) -> np.ndarray:
        base, last = merged[name][0], merged[name][4]
        return (last / last.sum() - base / base.sum()).ravel()

    design = np.stack([share_change("arc"), share_change("mmlu")], axis=1)
    beta, *_ = np.linalg.lstsq(design, share_change("math"), rcond=None)
    assert [float(row["coefficient_arc"]), float(row["coefficient_mmlu"])] == pytest.approx(beta, rel=1e-6)
    assert "changes of the shares of each pattern's sum" in (tmp_path / "compose.md").read_text()


def test_compose_says_when_the_overall_scale_moved():
    """A target whose pattern only shrinks 4x (its loss fell): the raw fit explains it by a basis that grew by the
    target's base pattern, and says the scale moved; in shares the target did not change at all."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 1.5, (2, 4))
    other = rng.uniform(0.5, 1.5, (2, 4))
    patterns = Patterns(probes={"t": {0: base, 9: base / 4}, "b": {0: other, 9: other + base},
                                "c": {0: other, 9: other * 1.1}},
                        shape=(2, 4), sources={"t": Path("t"), "b": Path("b"), "c": Path("c")})
    raw = compose_command(patterns, "t", ["b", "c"], 1)
    assert "| 1 | 1.0000 | b=-0.7500 |" in raw
    assert "Total score, last step over base: t x0.25." in raw  # b grew 1 + base.sum() / other.sum(), under 2x
    with pytest.raises(ValueError, match="target"):  # t's shares did not move: nothing to fit, refused
        compose_command(patterns, "t", ["b", "c"], 1, shares=True)
    patterns.probes["t"][9] = base / 4 + other / 100
    assert "Total score" not in compose_command(patterns, "t", ["b", "c"], 1, shares=True)


def test_mix_draws_proportional_rows_reproducibly(capsys, tmp_path):
    datasets = {"A": DATA / "gsm8k.jsonl", "B": DATA / "math.jsonl", "C": DATA / "winogrande.jsonl"}
    argv = ["mix", "--coefficients", "A=0.6", "B=0.3", "C=-0.1", "--datasets",
            *(f"{name}={path}" for name, path in datasets.items()), "--total", 20, "--top-k", 2, "--seed", 3]
    printed = _run(capsys, *argv, "--out", tmp_path / "mix.jsonl")
    sources = {name: set(_canonical(path)) for name, path in datasets.items()}
    drawn = _canonical(tmp_path / "mix.jsonl")
    assert len(set(drawn)) == 20  # without replacement
    # quotas 13.33 and 6.67: floors 13 + 6, the leftover row to B's larger remainder
    assert sum(row in sources["A"] for row in drawn) == 13 and sum(row in sources["B"] for row in drawn) == 7
    assert "| A | 0.6000 | 13 |" in printed

    _run(capsys, *argv, "--out", tmp_path / "again.jsonl")
    assert (tmp_path / "again.jsonl").read_text() == (tmp_path / "mix.jsonl").read_text()
    argv[argv.index("--seed") + 1] = 4
    _run(capsys, *argv, "--out", tmp_path / "other.jsonl")
    assert (tmp_path / "other.jsonl").read_text() != (tmp_path / "mix.jsonl").read_text()
    assert [row in sources["A"] for row in drawn] != [True] * 13 + [False] * 7  # shuffled, not in blocks

    error = _fails(capsys, "mix", "--coefficients", "A=1", "--datasets", f"A={datasets['A']}", "--total", 301,
                   "--out", tmp_path / "too_many.jsonl")
    assert f"dataset A ({datasets['A']}) has 300 rows but the mixture asks for 301" in error
    error = _fails(capsys, "mix", "--coefficients", "A=1", "B=2", "--datasets", f"A={datasets['A']}", "--total", 5,
                   "--out", tmp_path / "missing.jsonl")
    assert "no --datasets entry for B" in error
    error = _fails(capsys, "mix", "--coefficients", "A=1", "--datasets", f"A={datasets['A']}", f"A={datasets['B']}",
                   "--total", 5, "--out", tmp_path / "twice.jsonl")
    assert "--datasets names A more than once" in error
    assert not any(tmp_path.glob("t*.jsonl")) and not (tmp_path / "missing.jsonl").exists()


def test_mix_writes_rows_exactly_as_read(capsys, tmp_path):
    jsonl_lines = ['{"prompt":"p1",  "response":"023689"}', '{"response": 16, "prompt": "p2", "extra": 1.50}']
    (tmp_path / "a.jsonl").write_text("".join(line + "\n" for line in jsonl_lines))
    (tmp_path / "b.csv").write_text('prompt,response\n"""x""",023689\nq,null\n')
    _run(capsys, "mix", "--coefficients", "A=1", "B=1", "--datasets", f"A={tmp_path / 'a.jsonl'}",
         f"B={tmp_path / 'b.csv'}", "--total", 4, "--out", tmp_path / "mix.jsonl")
    written = (tmp_path / "mix.jsonl").read_text().splitlines()
    from_csv = [json.dumps({"prompt": '"x"', "response": "023689"}), json.dumps({"prompt": "q", "response": "null"})]
    assert sorted(written) == sorted(jsonl_lines + from_csv)


def test_mix_from_compose_csv(runs, capsys, tmp_path):
    root, _ = runs
    bases = ["arc", "winogrande", "mmlu"]
    _run(capsys, "compose", *(root / run for run in RUNS), "--target", "math", "--bases", *bases,
         "--subset-size", 3, "--out", tmp_path)
    [fit] = _read_csv(tmp_path / "compose.csv")
    coefficients = {name: float(fit[f"coefficient_{name}"]) for name in bases}
    positive = {name: value for name, value in coefficients.items() if value > 0}
    assert positive, f"the fixture's fit has no positive coefficient: {coefficients}"
    _run(capsys, "mix", "--from-compose", tmp_path / "compose.csv", "--datasets",
         *(f"{name}={DATA / FILES[name]}" for name in bases), "--total", 30, "--out", tmp_path / "mix.jsonl")
    quotas = {name: 30 * value / sum(positive.values()) for name, value in positive.items()}
    floors = {name: int(np.floor(quota)) for name, quota in quotas.items()}
    for name in sorted(quotas, key=lambda n: floors[n] - quotas[n])[:30 - sum(floors.values())]:
        floors[name] += 1
    drawn = _canonical(tmp_path / "mix.jsonl")
    for name in bases:
        assert sum(row in set(_canonical(DATA / FILES[name])) for row in drawn) == floors.get(name, 0)


def test_run_discovery_and_bad_runs(runs, capsys, tmp_path):
    root, scored = runs
    for version in ("version_0", "version_1"):
        save_pattern(tmp_path / "logs" / version / "head_patterns", "arc", 0, torch.rand(2, 4))
        save_pattern(tmp_path / "logs" / version / "head_patterns", "arc", 3, torch.rand(2, 4))
    os.utime(tmp_path / "logs" / "version_0" / "head_patterns" / "index.json", (0, 0))  # written long ago
    main(["stats", str(tmp_path / "logs")])
    captured = capsys.readouterr()
    latest = tmp_path / "logs" / "version_1" / "head_patterns"
    assert f"holds 2 patterns directories; using the latest, {latest}" in captured.err

    (tmp_path / "empty" / "version_0").mkdir(parents=True)
    error = _fails(capsys, "stats", tmp_path / "empty")
    assert f"no patterns under {tmp_path / 'empty'}" in error and "head_patterns" in error

    save_pattern(tmp_path / "big" / "head_patterns", "arc", 0, torch.rand(3, 4))
    error = _fails(capsys, "stats", root / "gsm8k_task/version_0", tmp_path / "big")
    assert "runs of different models" in error and "(2, 4)" in error and "(3, 4)" in error
    assert str(root / "gsm8k_task/version_0") in error and str(tmp_path / "big") in error

    save_pattern(tmp_path / "other_model" / "head_patterns", "mmlu", 0, torch.rand(2, 4), model={"name_or_path": "b"})
    error = _fails(capsys, "stats", root / "gsm8k_task/version_0", tmp_path / "other_model")
    assert "runs of different models" in error and "LlamaForCausalLM" in error and "'b'" in error

    save_pattern(tmp_path / "one_step" / "head_patterns", "arc", 0, torch.rand(2, 4))
    error = _fails(capsys, "drift", tmp_path / "one_step", "--out", tmp_path / "out")
    assert "probe 'arc' has a pattern at step 0 only" in error


@pytest.mark.parametrize("damage, message", [
    ("index_not_json", "index.json is not valid JSON"),
    ("index_probes_list", "index.json: 'probes' is []"),
    ("truncated_pattern", "step_00000003.safetensors is not a readable safetensors file"),
])
def test_damaged_newest_run_is_an_error_naming_the_file(capsys, tmp_path, damage, message):
    """Never fall back to an older run, and never a raw traceback: exit 1 with the damaged file named."""
    for version in ("version_0", "version_1"):
        for step in (0, 3):
            save_pattern(tmp_path / "logs" / version / "head_patterns", "arc", step, torch.rand(2, 4))
    os.utime(tmp_path / "logs" / "version_0" / "head_patterns" / "index.json", (0, 0))  # the older run
    newest = tmp_path / "logs" / "version_1" / "head_patterns"
    if damage == "index_not_json":
        (newest / "index.json").write_text((newest / "index.json").read_text()[:40])
    elif damage == "index_probes_list":
        index = json.loads((newest / "index.json").read_text())
        (newest / "index.json").write_text(json.dumps({**index, "probes": []}))
    else:
        path = newest / "arc" / "step_00000003.safetensors"
        path.write_bytes(path.read_bytes()[:-3])
    error = _fails(capsys, "stats", tmp_path / "logs")
    assert message in error and str(newest) in error
    assert "Traceback" not in error


def test_probe_without_base_step_is_refused(capsys, tmp_path):
    """A directory whose earliest step is not 0 (the second part of a resumed run of an older version) would be
    analysed against a fine-tuned model taken for the base: refused, naming the probe, the step and the folder."""
    directory = tmp_path / "version_1" / "head_patterns"
    for step in (16, 32):
        save_pattern(directory, "arc", step, torch.rand(2, 4))
    for command in (["stats"], ["similarity", "--out", tmp_path / "out"], ["drift", "--out", tmp_path / "out"]):
        if command[0] == "similarity":
            save_pattern(directory, "mmlu", 16, torch.rand(2, 4))
            save_pattern(directory, "mmlu", 32, torch.rand(2, 4))
        error = _fails(capsys, command[0], directory, *command[1:])
        assert f"probe 'arc' has no pattern at step 0 (the base model); its earliest is step 16 in {directory}" in error


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_pattern_is_refused_naming_probe_step_and_file(capsys, tmp_path, bad):
    """No statistic and no picture from a NaN/inf pattern (heatmaps drew flat pictures with exit 0)."""
    directory = tmp_path / "head_patterns"
    for probe in ("arc", "mmlu", "math"):
        for step in (0, 3, 6):
            save_pattern(directory, probe, step, torch.rand(2, 4))
    path = directory / "mmlu" / "step_00000003.safetensors"
    pattern = torch.rand(2, 4)
    pattern[1, 2] = bad
    safetensors.torch.save_file({"pattern": pattern}, path)
    out = tmp_path / "out"
    for command in (["stats"], ["similarity", "--out", out], ["drift", "--out", out], ["heatmaps", "--out", out],
                    ["compose", "--target", "arc", "--bases", "mmlu", "math", "--subset-size", 1]):
        error = _fails(capsys, command[0], directory, *command[1:])
        assert f"probe 'mmlu', step 3: {path} holds" in error and "Traceback" not in error
    assert not out.exists() or not list(out.iterdir())


def test_out_is_checked_before_any_work(capsys, tmp_path, monkeypatch):
    """An --out that cannot be written is one line naming it, before the runs are read (load_runs never runs)."""
    import lightning_sft.analysis.__main__ as analysis_main

    def no_work(runs):
        raise AssertionError("the runs were read before --out was checked")

    monkeypatch.setattr(analysis_main, "load_runs", no_work)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    run = tmp_path / "run"
    for command in (["stats"], ["similarity"], ["drift"], ["heatmaps"],
                    ["compose", "--target", "a", "--bases", "b", "--subset-size", 1]):
        error = _fails(capsys, command[0], run, *command[1:], "--out", a_file)
        assert error == f"error: --out {a_file} is a file; pass a directory (it is created if missing)\n"
        error = _fails(capsys, command[0], run, *command[1:], "--out", a_file / "below")
        assert f"error: --out {a_file / 'below'}: {a_file} is a file, not a directory" in error
    error = _fails(capsys, "mix", "--coefficients", "a=1", "--datasets", f"a={a_file}", "--total", 1, "--out",
                   tmp_path)
    assert error == f"error: --out {tmp_path} is an existing directory; pass the path of the file to write\n"


def test_a_file_given_as_a_run_is_one_line(capsys, tmp_path):
    save_pattern(tmp_path / "head_patterns", "arc", 0, torch.rand(2, 4))
    index = tmp_path / "head_patterns" / "index.json"
    error = _fails(capsys, "stats", index)
    assert error == (f"error: {index} is a file, not a run directory; pass the patterns directory holding index.json"
                     " or a log directory above it\n")


@pytest.mark.parametrize(("cell", "shown"), [(",abc", "'abc'"), (",nan", "'nan'"), (",-inf", "'-inf'"), ("", "None")])
def test_from_compose_with_a_value_that_is_not_a_number(capsys, tmp_path, cell, shown):
    """A rank-1 coefficient that is not a finite number (or is missing: a short row) is named with its line."""
    compose = tmp_path / "compose.csv"
    compose.write_text(f"rank,r2,bases,coefficient_a,coefficient_b\n2,0.5,a,0.3,\n1,0.9,a+b,0.5{cell}\n")
    error = _fails(capsys, "mix", "--from-compose", compose, "--datasets", f"a={compose}", f"b={compose}",
                   "--total", 2, "--out", tmp_path / "mix.jsonl")
    assert error == (f"error: {compose}:3: column 'coefficient_b' holds {shown}, not a finite number; pass the"
                     " compose.csv written by `python -m lightning_sft.analysis compose ... --out DIR`\n")


def test_unknown_probe_names(runs, capsys, tmp_path):
    root, _ = runs
    run = root / "gsm8k_task/version_0"
    error = _fails(capsys, "compose", run, "--target", "math", "--bases", "arc", "winogrande", "--subset-size", 1)
    assert "target probe 'math' not found; the probes are: gsm8k, arc, winogrande" in error
    error = _fails(capsys, "compose", run, "--target", "gsm8k", "--bases", "arc", "hellaswag", "mmlu",
                   "--subset-size", 1)
    assert "--bases probe 'hellaswag', 'mmlu' not found; the probes are: gsm8k, arc, winogrande" in error
    error = _fails(capsys, "compose", run, "--target", "gsm8k", "--bases", "arc", "gsm8k", "--subset-size", 1)
    assert "target 'gsm8k' is also in --bases" in error
    error = _fails(capsys, "compose", run, "--target", "gsm8k", "--bases", "arc", "--subset-size", 2)
    assert "subset_size=2 but there are 1 bases (arc)" in error


def test_module_entry_point(runs):
    root, _ = runs
    command = [sys.executable, "-m", "lightning_sft.analysis", "stats", str(root / "math_task/version_0")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=120)
    assert result.returncode == 0, result.stderr
    assert "| mmlu | 0 | 4 |" in result.stdout


def test_stats_bootstrap_over_probe_rows(capsys, tmp_path):
    generator = np.random.default_rng(1)
    rows = {step: generator.gamma(2.0, size=(20, 2, 4)).astype(np.float32) for step in (0, 3)}
    folder = tmp_path / "logs" / "head_patterns"
    for step, per_example in rows.items():
        save_pattern(folder, "arc", step, per_example.mean(axis=0), per_example=per_example,
                     losses=np.ones(20, dtype=np.float32))
    printed = _run(capsys, "stats", tmp_path / "logs", "--bootstrap", 200, "--out", tmp_path / "out")
    [row] = _read_csv(tmp_path / "out" / "stats_bootstrap.csv")
    expected = stats.bootstrap_table1(rows[0], rows[3], resamples=200)
    assert row["rows"] == "20"
    for name, triple in expected.items():
        assert [float(row[f"{name}_{part}"]) for part in ("value", "low", "high")] == pytest.approx(triple)
    [plain] = _read_csv(tmp_path / "out" / "stats.csv")
    assert float(plain["gini_last"]) == pytest.approx(float(row["gini_last_value"]), rel=1e-6)
    assert "bootstrap intervals over probe rows (200 resamples)" in printed
    assert printed == (tmp_path / "out" / "stats.md").read_text() + "\n"  # print adds a newline


def test_stats_bootstrap_needs_per_example(runs, capsys):
    root, _ = runs
    error = _fails(capsys, "stats", root / "gsm8k_task/version_0", "--bootstrap", 10)
    assert "holds no per-example patterns" in error and "per_example=True" in error
