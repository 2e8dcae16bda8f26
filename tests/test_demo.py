"""The README's qualitative claims about the demo, on a shorter run of the same config (300 of its 1500 steps):
starting from random weights, fine-tuning concentrates head activation (Gini and CV rise for every task: the
regime opposite to the paper's pretrained models), and the complex task's pattern change is explained best by
its own two basic tasks, both with positive weight. The README's numbers come from the full run."""

import subprocess
import sys

import pytest
import yaml

from lightning_sft.analysis.runs import load_runs
from lightning_sft.stats import coefficient_of_variation, composition_search, gini
from tests.test_train import ROOT

BASES = ("addition", "reversal", "sorting", "counting")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("demo")
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    config["trainer"].update(max_steps=300, default_root_dir=str(directory), enable_checkpointing=False,
                             enable_progress_bar=False)
    [callback] = [c for c in config["trainer"]["callbacks"] if c["class_path"] == "callbacks.HeadActivationCallback"]
    config["trainer"]["callbacks"] = [callback]  # no checkpoints (enable_checkpointing=False)
    callback["init_args"].update(steps=[0, 300], log_images=False, log_histograms=False)  # same weights, fewer probes
    config["model"]["export_dir"] = None
    (directory / "demo.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "fit", "--config", str(directory / "demo.yaml")],
                            cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-6000:]
    return load_runs([directory])


@pytest.mark.slow
def test_random_init_demo_concentrates_activation_on_every_task(demo_run):
    for probe in (*BASES, "reversed_sum"):
        _, base, _, last = demo_run.base_and_last(probe)
        assert gini(last) > gini(base) + 0.05, probe
        assert coefficient_of_variation(last) > coefficient_of_variation(base), probe


@pytest.mark.slow
def test_reversed_sum_is_composed_best_of_addition_and_reversal(demo_run):
    fits = composition_search(demo_run.change("reversed_sum"), {base: demo_run.change(base) for base in BASES}, 2)
    best = fits[0]
    assert set(best.bases) == {"addition", "reversal"} and all(value > 0 for value in best.coefficients.values())
    assert best.r2 > fits[1].r2


def test_out_that_is_a_file_is_one_line(tmp_path, capsys):
    from lightning_sft.demo import main

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(SystemExit) as error:
        main(["--out", str(a_file)])
    assert error.value.code == 1
    assert capsys.readouterr().err == f"error: --out {a_file} is a file; pass a directory (it is created if missing)\n"
