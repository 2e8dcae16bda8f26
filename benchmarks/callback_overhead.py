"""Wall time of the offline demo without HeadActivationCallback, with it, and with it but `log_images: false`.

    python benchmarks/callback_overhead.py [--max-steps 600] [--repeats 3] [-- extra train.py arguments]

Each fit runs `train.py fit --config configs/demo.yaml` in its own process (same seed, same data); the
three variants alternate (without, with, no images; repeated `--repeats` times) so that a slow spell
of a shared machine falls on all of them alike. Prints the median and the range of each (wall time, and
the fit process's CPU time, which a busy machine disturbs less), and the time
inside the scorer from the callback's `head_probe/seconds` scalars. Arguments after `--` go to every
fit (e.g. `-- --trainer.precision 32-true`).
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

ROOT = Path(__file__).parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
CALLBACK = "callbacks.HeadActivationCallback"


def without_images_config(path: Path) -> Path:
    """The demo config with the callback's `log_images: false`; raises if the demo has no such callback."""
    config = yaml.safe_load(DEMO.read_text())
    callbacks = [c for c in config["trainer"].get("callbacks", []) if c["class_path"] == CALLBACK]
    if len(callbacks) != 1:
        raise ValueError(f"{DEMO} must configure exactly one {CALLBACK}; it has {len(callbacks)}.")
    callbacks[0]["init_args"]["log_images"] = False
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def fit(directory: Path, config: Path, max_steps: int, extra: list[str], with_callback: bool = True
        ) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one fit in its own process."""
    command = [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(config),
               "--trainer.default_root_dir", str(directory), "--trainer.max_steps", str(max_steps),
               "--trainer.enable_progress_bar", "false", *extra]
    if not with_callback:
        command += ["--trainer.callbacks", "[]"]
    started, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - started, used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime


def images_and_scoring(run_dir: Path) -> tuple[int, float, int]:
    """(images logged, seconds inside the scorer, probe runs) of one fit's TensorBoard runs."""
    images, seconds, probes = 0, 0.0, 0
    for directory in [run_dir, *sorted(run_dir.glob("probe_*"))]:
        events = EventAccumulator(str(directory), size_guidance={"images": 0}).Reload()
        images += sum(len(events.Images(tag)) for tag in events.Tags()["images"])
        if "head_probe/seconds" in events.Tags()["scalars"]:
            probes += 1
            seconds += sum(event.value for event in events.Scalars("head_probe/seconds"))
    return images, seconds, probes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("extra", nargs="*", help="arguments passed to every fit, after `--`")
    args = parser.parse_args()
    variants = ("without callback", "with HeadActivationCallback", "with the callback, `log_images: false`")
    times: dict[str, list[float]] = {variant: [] for variant in variants}
    cpu_times: dict[str, list[float]] = {variant: [] for variant in variants}
    with tempfile.TemporaryDirectory() as scratch:
        no_images = without_images_config(Path(scratch) / "no_images.yaml")
        configs = {variants[0]: DEMO, variants[1]: DEMO, variants[2]: no_images}
        for repeat in range(args.repeats):
            for index, variant in enumerate(variants):
                directory = Path(scratch) / f"{index}_{repeat}"
                wall, cpu = fit(directory, configs[variant], args.max_steps, args.extra, with_callback=index > 0)
                times[variant].append(wall)
                cpu_times[variant].append(cpu)
                print(f"{variant}, run {repeat + 1}: {wall:.1f} s wall, {cpu:.1f} s CPU", file=sys.stderr, flush=True)
        runs = {variant: Path(scratch) / f"{index}_0" / "lightning_logs" / "version_0"
                for index, variant in enumerate(variants)}
        images, scoring, probes = images_and_scoring(runs[variants[1]])
        no_images_count = images_and_scoring(runs[variants[2]])[0]
    if no_images_count or not images:
        raise RuntimeError(f"the variants are not what they say: {images} images with, {no_images_count} without")
    base, cpu_base = statistics.median(times[variants[0]]), statistics.median(cpu_times[variants[0]])
    print(f"| demo fit, {args.max_steps} steps, {args.repeats} runs each {' '.join(args.extra)} "
          "| median wall time (s) | range (s) | median / without | median CPU time (s) | CPU / without |")
    print("|---|---|---|---|---|---|")
    for variant in variants:
        median, cpu = statistics.median(times[variant]), statistics.median(cpu_times[variant])
        label = variant + (f" ({probes} probes, {images} images)" if variant == variants[1] else "")
        print(f"| {label} | {median:.1f} | {min(times[variant]):.1f}-{max(times[variant]):.1f} | {median / base:.3f} "
              f"| {cpu:.1f} | {cpu / cpu_base:.3f} |")
    print(f"| time inside the scorer (sum of `head_probe/seconds`, first run with the callback) | {scoring:.1f} |"
          " | | | |")


if __name__ == "__main__":
    main()
