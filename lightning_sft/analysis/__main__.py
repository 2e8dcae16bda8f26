"""`python -m lightning_sft.analysis <command> ...`: the paper's analyses of saved head patterns.

    stats      RUN... [--out DIR] [--bootstrap N]            Table 1: Gini, CV, kurtosis, base vs last step
    similarity RUN... --out DIR                              Figure 2: correlation of pattern changes
    drift      RUN... --out DIR                              Figure 5: Pearson / MSE vs base, per step
    heatmaps   RUN... --out DIR                              layers x heads heatmaps: base, last, change
    compose    RUN... --target T --bases A B ... --subset-size K [--shares] [--out DIR]   Figure 4: R^2 per subset
    mix        (--coefficients A=0.4 ... | --from-compose CSV) --datasets A=PATH ... --total N --out FILE

Scenario 2 (data selection) re-runs a model: `python -m lightning_sft.select`.
A RUN is a patterns directory (holding index.json) or a directory above one (a Lightning log dir).
"""

import argparse
import sys
from pathlib import Path
from typing import Sequence, TypeVar

from lightning_sft.analysis.commands import (compose_command, drift_command, heatmaps_command, similarity_command,
                                             stats_command)
from lightning_sft.analysis.runs import load_runs
from lightning_sft.analysis.scenarios import mix_command, read_compose_coefficients
from lightning_sft.command_line import check_output_dir, check_output_file

T = TypeVar("T")


def _named(text: str) -> tuple[str, str]:
    name, separator, value = text.partition("=")
    if not separator or not name or not value:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value


def _coefficient(text: str) -> tuple[str, float]:
    name, value = _named(text)
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not a number") from None


def _named_dict(pairs: Sequence[tuple[str, T]], option: str) -> dict[str, T]:
    names = [name for name, _ in pairs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{option} names {', '.join(repeated)} more than once; pass each name once")
    return dict(pairs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_sft.analysis", description="The paper's analyses of saved head patterns.",
        epilog="A RUN is a patterns directory (holding index.json) or a directory above one.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    runs_help = "patterns directories or log directories above them; several runs of one model are merged"

    stats = commands.add_parser("stats", help="Table 1: Gini, CV and kurtosis of each probe, base vs last step")
    stats.add_argument("runs", nargs="+", metavar="RUN", help=runs_help)
    stats.add_argument("--out", type=Path, help="directory for stats.csv and stats.md")
    stats.add_argument("--bootstrap", type=int, default=0, metavar="N",
                       help="N resamples of the probe rows: 95%% intervals of every statistic, its change and the "
                            "Pearson drift (needs patterns saved with per_example=True)")

    similarity = commands.add_parser("similarity", help="Figure 2: correlation of pattern changes across probes")
    similarity.add_argument("runs", nargs="+", metavar="RUN", help=runs_help)
    similarity.add_argument("--out", type=Path, required=True, help="directory for the CSV and PNG heatmaps")

    drift = commands.add_parser("drift", help="Figure 5: Pearson and MSE of each step's pattern vs the base")
    drift.add_argument("runs", nargs="+", metavar="RUN", help=runs_help)
    drift.add_argument("--out", type=Path, required=True, help="directory for drift.csv and drift.png")

    heatmaps = commands.add_parser("heatmaps", help="layers x heads heatmaps of each probe: base, last step, change")
    heatmaps.add_argument("runs", nargs="+", metavar="RUN", help=runs_help)
    heatmaps.add_argument("--out", type=Path, required=True, help="directory for the PNG heatmaps")

    compose = commands.add_parser("compose", help="Figure 4: R^2 of the target's change fitted by K bases")
    compose.add_argument("runs", nargs="+", metavar="RUN", help=runs_help)
    compose.add_argument("--target", required=True, help="probe whose pattern change is fitted")
    compose.add_argument("--bases", nargs="+", required=True, help="probes whose changes are the regressors")
    compose.add_argument("--subset-size", type=int, required=True, help="number of bases in each fit (K)")
    compose.add_argument("--shares", action="store_true",
                         help="fit changes of each head's share of its pattern's sum, not of the raw scores "
                              "(whose overall size follows the probe's loss)")
    compose.add_argument("--out", type=Path, help="directory for compose.csv, compose.md and compose.png")

    mix = commands.add_parser("mix", help="Scenario 1: mix datasets in proportion to composition coefficients")
    source = mix.add_mutually_exclusive_group(required=True)
    source.add_argument("--coefficients", nargs="+", type=_coefficient, metavar="NAME=VALUE",
                        help="composition coefficients, e.g. gsm8k=0.4 math=0.1")
    source.add_argument("--from-compose", type=Path, metavar="CSV", help="compose.csv; its best fit's coefficients")
    mix.add_argument("--datasets", nargs="+", type=_named, required=True, metavar="NAME=PATH",
                     help="a data file (.jsonl/.json/.parquet/.csv) per coefficient name")
    mix.add_argument("--total", type=int, required=True, help="rows in the mixture")
    mix.add_argument("--top-k", type=int, help="mix the K datasets with the largest positive coefficients "
                                               "(default: every positive one)")
    mix.add_argument("--seed", type=int, default=0, help="seed of the draws and the shuffle")
    mix.add_argument("--out", type=Path, required=True, help="JSONL file to write")
    return parser


def run(args: argparse.Namespace) -> str:
    """Run the parsed command; returns what to print. `--out` is checked first, before any work."""
    if args.out is not None:
        (check_output_file if args.command == "mix" else check_output_dir)(args.out)
    if args.command == "stats":
        return stats_command(load_runs(args.runs), args.out, args.bootstrap)
    if args.command == "similarity":
        return similarity_command(load_runs(args.runs), args.out)
    if args.command == "drift":
        return drift_command(load_runs(args.runs), args.out)
    if args.command == "heatmaps":
        return heatmaps_command(load_runs(args.runs), args.out)
    if args.command == "compose":
        return compose_command(load_runs(args.runs), args.target, args.bases, args.subset_size, args.out,
                               args.shares)
    if args.command == "mix":
        if args.from_compose is not None:
            coefficients = read_compose_coefficients(args.from_compose)
        else:
            coefficients = _named_dict(args.coefficients, "--coefficients")
        top_k = args.top_k if args.top_k is not None else len(coefficients)
        return mix_command(coefficients, _named_dict(args.datasets, "--datasets"), args.total, top_k, args.seed,
                           args.out)


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        print(run(args))
    except (ValueError, FileNotFoundError) as error:
        parser.exit(1, f"error: {error}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
