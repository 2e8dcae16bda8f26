"""Wall time of the offline demo with and without HeadActivationCallback (and without its images), in one run.

    python benchmarks/callback_overhead.py [--max-steps 600]

Each fit runs `train.py fit --config configs/demo.yaml` in its own process (same seed, same data);
the callback's own per-probe wall time is also read back from its `head_probe/<probe>/seconds` scalars.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).parents[1]


def fit(directory: Path, max_steps: int, with_callback: bool, config: Path = ROOT / "configs" / "demo.yaml") -> float:
    command = [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(config),
               "--trainer.default_root_dir", str(directory), "--trainer.max_steps", str(max_steps),
               "--trainer.enable_progress_bar", "false"]
    if not with_callback:
        command += ["--trainer.callbacks", "[]"]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        without = fit(Path(scratch) / "without", args.max_steps, with_callback=False)
        with_callback = fit(Path(scratch) / "with", args.max_steps, with_callback=True)
        no_images = Path(scratch) / "no_images.yaml"
        no_images.write_text((ROOT / "configs" / "demo.yaml").read_text().replace(
            "        max_length: 64\n", "        max_length: 64\n        log_images: false\n"))
        without_images = fit(Path(scratch) / "no_images", args.max_steps, with_callback=True, config=no_images)
        events = EventAccumulator(str(Path(scratch) / "with" / "lightning_logs" / "version_0")).Reload()
        probe_tags = [tag for tag in events.Tags()["scalars"] if tag.endswith("/seconds")]
        probing = sum(event.value for tag in probe_tags for event in events.Scalars(tag))
        probe_steps = len(events.Scalars(probe_tags[0]))
    print(f"| demo fit, {args.max_steps} steps | wall time (s) |")
    print("|---|---|")
    print(f"| without callback | {without:.1f} |")
    print(f"| with HeadActivationCallback ({len(probe_tags)} probes x {probe_steps} steps) | {with_callback:.1f} |")
    print(f"| ratio with / without | {with_callback / without:.2f} |")
    print(f"| with the callback, `log_images: false` | {without_images:.1f} |")
    print(f"| ratio with (no images) / without | {without_images / without:.2f} |")
    print(f"| time inside the scorer (sum of head_probe/*/seconds) | {probing:.1f} |")


if __name__ == "__main__":
    main()
