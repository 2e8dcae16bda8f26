"""Wall time of the offline demo without callbacks, with HeadActivationCallback (as configured), with it but
`log_images: false`, and with TaskAccuracyCallback added beside it.

    python benchmarks/callback_overhead.py [--max-steps N] [--repeats 3] [-- extra train.py arguments]

Each fit runs `train.py fit --config configs/demo.yaml` in its own process (same seed, same data; the demo's
steps unless `--max-steps`). Each of `--repeats` rounds runs the variants one after another (in reverse order
every other round), then one more fit of the last variant under Lightning's SimpleProfiler, so a slow spell of
a shared machine falls on all of them alike. TaskAccuracyCallback evaluates the five demo tasks on their
held-out probe rows (32 each, greedy, at most 8 new tokens) every `--eval-every` steps and at the end. The
scorer's CPU kernel is built (or found) before the first fit, so no fit pays its one-time compilation.

Prints, per variant, the median and range of the wall time and of the fit process's CPU time, the ratio of
medians to the fit without callbacks, and the median (and range) of the paired ratios: each round's fit over
the same round's fit without callbacks, which a slow spell longer than a round cancels. Then the time inside
the scorer from the callback's `head_probe/seconds` scalars, and from the profiled fits the time inside each
callback's hooks over the same fit's time outside both callbacks: numerator and denominator come from one
fit, so machine speed cancels (identical fits here differ by up to 20% in wall time). Arguments after `--`
go to every fit (e.g. `-- --trainer.precision 32-true`).
"""

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_sft.scorer.cpu_kernel import scored_attention_backward

ROOT = Path(__file__).parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
CALLBACK = "callbacks.HeadActivationCallback"
DEMO_TASKS = ("addition", "reversal", "sorting", "counting", "reversed_sum")


VARIANTS = ("without callbacks", "with HeadActivationCallback", "with it, `log_images: false`",
            "with it and TaskAccuracyCallback")


def demo_variants(directory: Path, eval_every: int) -> dict[str, Path]:
    """Variant -> its config, the demo's with one change each (written into `directory`); raises if the demo
    has no single HeadActivationCallback to vary."""
    paths = {}
    for variant in VARIANTS:
        config = yaml.safe_load(DEMO.read_text())
        callbacks = config["trainer"].get("callbacks", [])
        heads = [c for c in callbacks if c["class_path"] == CALLBACK]
        if len(heads) != 1:
            raise ValueError(f"{DEMO} must configure exactly one {CALLBACK}; it has {len(heads)}.")
        if variant == VARIANTS[0]:  # the demo's checkpointing stays in every variant
            config["trainer"]["callbacks"] = [c for c in callbacks if c["class_path"] != CALLBACK]
        elif variant == VARIANTS[2]:
            heads[0]["init_args"]["log_images"] = False
        elif variant == VARIANTS[3]:
            callbacks.append({"class_path": "callbacks.TaskAccuracyCallback", "init_args": {
                "tasks": {task: f"demo/data/{task}_probe.jsonl" for task in DEMO_TASKS},
                "every_n_steps": eval_every, "batch_size": 32, "max_new_tokens": 8}})
        paths[variant] = directory / f"variant_{len(paths)}.yaml"
        paths[variant].write_text(yaml.safe_dump(config, sort_keys=False))
    return paths


def fit(directory: Path, config: Path, max_steps: int | None, extra: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one fit in its own process."""
    command = [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(config),
               "--trainer.default_root_dir", str(directory), "--trainer.enable_progress_bar", "false", *extra]
    if max_steps is not None:
        command += ["--trainer.max_steps", str(max_steps)]
    started, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - started, used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime


def hook_seconds(directory: Path, config: Path, max_steps: int | None, extra: list[str]) -> dict[str, float]:
    """Callback class name -> seconds inside its hooks, and "Total" -> the fit's profiled seconds (from the
    Trainer's construction to the end of fit), from one fit of `config` under SimpleProfiler."""
    profiler = ["--trainer.profiler.class_path", "lightning.pytorch.profilers.SimpleProfiler",
                "--trainer.profiler.init_args.dirpath", str(directory),
                "--trainer.profiler.init_args.filename", "profile"]
    fit(directory, config, max_steps, [*extra, *profiler])
    return read_profile(directory / "fit-profile.txt")


def read_profile(path: Path) -> dict[str, float]:
    """SimpleProfiler's report rows `| action | mean | calls | total seconds | percent |`: seconds per callback
    class (its `[Callback]<Name>...` rows summed) and "Total"."""
    seconds: dict[str, float] = {}
    for line in path.read_text().splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) > 4 and (cells[1].startswith("[Callback]") or cells[1] == "Total"):
            name = cells[1].removeprefix("[Callback]").split("{")[0].split(".")[0]
            seconds[name] = seconds.get(name, 0.0) + float(cells[4])
    if "Total" not in seconds:
        raise RuntimeError(f"no Total row in {path}; has SimpleProfiler's report changed?")
    return seconds


def logged(run_dir: Path) -> tuple[int, float, int, int]:
    """(images, seconds inside the scorer, probe runs, accuracy scalars) of one fit's TensorBoard runs."""
    images, seconds, probes, accuracies = 0, 0.0, 0, 0
    for directory in [run_dir, *sorted(run_dir.glob("probe_*"))]:
        events = EventAccumulator(str(directory), size_guidance={"images": 0, "scalars": 0}).Reload()
        images += sum(len(events.Images(tag)) for tag in events.Tags()["images"])
        accuracies += sum(len(events.Scalars(tag)) for tag in events.Tags()["scalars"] if tag.startswith("eval/"))
        if "head_probe/seconds" in events.Tags()["scalars"]:
            probes += 1
            seconds += sum(event.value for event in events.Scalars("head_probe/seconds"))
    return images, seconds, probes, accuracies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, help="default: the demo's trainer.max_steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-every", type=int, default=250, help="TaskAccuracyCallback's every_n_steps")
    parser.add_argument("extra", nargs="*", help="arguments passed to every fit, after `--`")
    args = parser.parse_args()
    if scored_attention_backward() is None:
        raise RuntimeError("the scorer's CPU kernel could not be built; the overhead would be the Python path's")
    times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    cpu_times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    with tempfile.TemporaryDirectory() as scratch:
        configs = demo_variants(Path(scratch), args.eval_every)
        profiled = []
        for repeat in range(args.repeats):
            for variant in VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]:  # no variant always first
                directory = Path(scratch) / f"{VARIANTS.index(variant)}_{repeat}"
                wall, cpu = fit(directory, configs[variant], args.max_steps, args.extra)
                times[variant].append(wall)
                cpu_times[variant].append(cpu)
                print(f"{variant}, run {repeat + 1}: {wall:.1f} s wall, {cpu:.1f} s CPU", file=sys.stderr, flush=True)
            profiled.append(hook_seconds(Path(scratch) / f"profiled_{repeat}", configs[VARIANTS[3]], args.max_steps,
                                         args.extra))
        counts = [logged(Path(scratch) / f"{index}_0" / "lightning_logs" / "version_0")
                  for index in range(len(VARIANTS))]
    (_, _, _, _), (images, scoring, probes, _), (no_images, _, _, _), (_, _, _, accuracies) = counts
    if no_images or not images or not accuracies:
        raise RuntimeError(f"the variants are not what they say: {images} images with the callback, {no_images} "
                           f"without images, {accuracies} accuracy scalars with TaskAccuracyCallback")
    base, cpu_base = statistics.median(times[VARIANTS[0]]), statistics.median(cpu_times[VARIANTS[0]])
    steps = args.max_steps or yaml.safe_load(DEMO.read_text())["trainer"]["max_steps"]
    print(f"| demo fit, {steps} steps, {args.repeats} rounds {' '.join(args.extra)} | median wall time (s) | range (s) "
          "| median / without | paired ratio: median (range) | median CPU time (s) | CPU / without |")
    print("|---|---|---|---|---|---|---|")
    labels = {VARIANTS[1]: f" ({probes} probes, {images} images)",
              VARIANTS[3]: f" (every {args.eval_every} steps and at the end: {accuracies} accuracy scalars)"}
    for variant in VARIANTS:
        median, cpu = statistics.median(times[variant]), statistics.median(cpu_times[variant])
        paired = [wall / without for wall, without in zip(times[variant], times[VARIANTS[0]])]
        print(f"| {variant}{labels.get(variant, '')} | {median:.1f} | {min(times[variant]):.1f}-"
              f"{max(times[variant]):.1f} | {median / base:.3f} | {statistics.median(paired):.3f} ({min(paired):.3f}-"
              f"{max(paired):.3f}) | {cpu:.1f} | {cpu / cpu_base:.3f} |")
    print(f"| time inside the scorer (sum of `head_probe/seconds`, first run with the callback) | {scoring:.1f} | | "
          f"{scoring / base:.3f} | | | |")
    for name in ("HeadActivationCallback", "TaskAccuracyCallback"):
        seconds = [run[name] for run in profiled]
        ratios = [1 + run[name] / (run["Total"] - run["HeadActivationCallback"] - run["TaskAccuracyCallback"])
                  for run in profiled]
        print(f"| time inside {name}'s hooks, over the same fit's time outside both callbacks (SimpleProfiler, "
              f"{args.repeats} fits of the last variant) | {statistics.median(seconds):.1f} | "
              f"{min(seconds):.1f}-{max(seconds):.1f} | | {statistics.median(ratios):.3f} ({min(ratios):.3f}-"
              f"{max(ratios):.3f}) | | |")


if __name__ == "__main__":
    main()
