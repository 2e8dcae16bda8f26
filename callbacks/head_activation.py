"""HeadActivationCallback: head-activation patterns at chosen optimizer steps, logged and saved.

At each scheduled step the callback scores every probe set with `lightning_sft.patterns.score_heads`
(mean over examples of sum_ij |A_ij * dL/dA_ij| per head, a [num_layers, num_heads] pattern) and logs

    head_activation/<probe>/{gini,cv,kurtosis,mean}   concentration (kurtosis: Pearson's, not excess)
    head_drift/<probe>/{pearson,mse}                   against the pattern at step 0 (the base model)
    head_probe/<probe>/{loss,seconds}                  mean probe loss (nats/token), wall time of the probe
    head_similarity/<a>/<b>                            correlation of the two probes' pattern changes
    images: head_activation/<probe>/{pattern,change}, head_similarity/change_correlation
    histograms: head_activation/<probe>/scores

and saves every pattern with `lightning_sft.storage.save_pattern` (read back with `load_patterns`).
"""

import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib.pyplot as plt
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from transformers import AutoTokenizer, PreTrainedModel
from typing_extensions import override

from callbacks.schedule import Schedule
from lightning_sft import stats
from lightning_sft.data import collate_batches, load_examples
from lightning_sft.patterns import score_heads
from lightning_sft.plots import correlation_heatmap, pattern_heatmap
from lightning_sft.storage import save_pattern

ProbeSource = str | dict[str, Any] | list[dict[str, list[int]]]
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class HeadActivationCallback(Callback):
    """Scores attention heads on probe sets during training and logs how their pattern moves.

    Args:
        probes: probe name -> a JSONL/JSON/Parquet/CSV file (formatted like training data), a dict of
            `datasets.load_dataset` arguments, or a list of pre-tokenized examples
            `{"input_ids": [...], "labels": [...]}` (labels -100 where not supervised).
        steps: explicit optimizer steps to probe at (0 = the base model, before any update).
        every_n_steps: probe at 0, n, 2n, ... (instead of `steps`).
            With neither, log-spaced: 0, 1, 2, 4, 8, ... (patterns move fastest early).
        probe_at_end: also probe after the last optimizer step, so "after SFT" is always measured.
        save_dir: where patterns are saved; default `<trainer.log_dir>/head_patterns`.
        max_examples: examples used per probe set (the first ones).
        batch_size: probe examples scored per forward/backward pass, per process.
        max_length: truncation length in tokens for file/dataset probes.
        adapters: probe name -> an adapter of `lightning_sft.adapters.ADAPTERS` (e.g. {"gsm8k": "gsm8k"}).
        tokenizer: id/directory for file probes; default the LightningModule's `tokenizer` attribute.
        model_attribute: the LightningModule attribute holding the transformers model; default: the
            one attribute that is a `PreTrainedModel`.
        log_images: heatmap images of each pattern and its change.
        log_histograms: histograms of the head scores.
        per_example: also save each example's [num_layers, num_heads] pattern and loss.
    """

    def __init__(
        self,
        probes: Mapping[str, ProbeSource],
        steps: list[int] | None = None,
        every_n_steps: int | None = None,
        probe_at_end: bool = True,
        save_dir: str | None = None,
        max_examples: int | None = 256,
        batch_size: int = 8,
        max_length: int = 1024,
        adapters: Mapping[str, str] | None = None,
        tokenizer: str | None = None,
        model_attribute: str | None = None,
        log_images: bool = True,
        log_histograms: bool = True,
        per_example: bool = False,
    ) -> None:
        if not probes:
            raise ValueError("HeadActivationCallback needs at least one probe set: probes={name: path, ...}.")
        folded: dict[str, str] = {}
        for name in probes:
            if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
                raise ValueError(
                    f"probe name {name!r} is not safe for file names and TensorBoard tags; "
                    "use letters, digits, '_', '.' and '-' only, not starting with '.' or '-'."
                )
            if name.lower() in folded:
                raise ValueError(f"probe names {folded[name.lower()]!r} and {name!r} collide (case-insensitively).")
            folded[name.lower()] = name
        self.schedule = Schedule(steps, every_n_steps, "HeadActivationCallback")
        if batch_size < 1 or (max_examples is not None and max_examples < 1) or max_length < 2:
            raise ValueError(
                f"batch_size={batch_size} and max_examples={max_examples} must be >= 1, max_length={max_length} >= 2."
            )
        unknown = set(adapters or {}) - set(probes)
        if unknown:
            raise ValueError(f"adapters name probes that do not exist: {sorted(unknown)}; probes: {sorted(probes)}.")
        self.probes = dict(probes)
        self.steps = self.schedule.steps
        self.every_n_steps = every_n_steps
        self.probe_at_end = probe_at_end
        self.save_dir = save_dir
        self.max_examples = max_examples
        self.batch_size = batch_size
        self.max_length = max_length
        self.adapters = dict(adapters or {})
        self.tokenizer = tokenizer
        self.model_attribute = model_attribute
        self.log_images = log_images
        self.log_histograms = log_histograms
        self.per_example = per_example
        self.base_patterns: dict[str, torch.Tensor] = {}
        self.done_steps: list[int] = []
        self._batches: dict[str, list[dict[str, torch.Tensor]]] = {}
        self._resolved_save_dir: Path | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            probes=sorted(self.probes), steps=self.steps, every_n_steps=self.every_n_steps, save_dir=self.save_dir
        )

    def is_scheduled(self, step: int) -> bool:
        """Whether optimizer step `step` (0 = before any update) is on the schedule."""
        return self.schedule.is_due(step)

    @override
    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        if stage != "fit":
            return
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # trainer.log_dir: collective, all ranks
        self._resolved_save_dir = Path(self.save_dir) if self.save_dir else log_dir / "head_patterns"
        for other in trainer.callbacks:
            if other is self or not isinstance(other, HeadActivationCallback):
                continue
            if other._resolved_save_dir == self._resolved_save_dir:
                shared = sorted(set(other.probes) & set(self.probes))
                if shared:
                    raise ValueError(
                        f"two HeadActivationCallbacks write probes {shared} to {self._resolved_save_dir}; "
                        "give them different probe names or different save_dir."
                    )
        if self.steps is not None and trainer.max_steps > 0 and self.steps[-1] > trainer.max_steps:
            rank_zero_warn(
                f"HeadActivationCallback steps {[s for s in self.steps if s > trainer.max_steps]} are beyond "
                f"trainer.max_steps={trainer.max_steps} and will never be probed."
            )
        if not trainer.loggers:
            rank_zero_warn(f"HeadActivationCallback: no logger; patterns are still saved to {self._resolved_save_dir}.")
        tokenizer = self._find_tokenizer(pl_module)
        for name, source in self.probes.items():
            self._batches[name] = self._load_probe(name, source, tokenizer)

    def _find_tokenizer(self, pl_module: "L.LightningModule") -> Any:
        if self.tokenizer is not None:
            return AutoTokenizer.from_pretrained(self.tokenizer)
        tokenizer = getattr(pl_module, "tokenizer", None)
        if tokenizer is None and any(not isinstance(source, list) for source in self.probes.values()):
            raise ValueError(
                "HeadActivationCallback needs a tokenizer for file/dataset probes: pass `tokenizer=` "
                f"or give {type(pl_module).__name__} a `tokenizer` attribute."
            )
        return tokenizer

    def _load_probe(self, name: str, source: ProbeSource, tokenizer: Any) -> list[dict[str, torch.Tensor]]:
        """Tokenizes (or checks) a probe set and cuts it into padded batches."""
        try:
            if isinstance(source, list):
                examples = [_checked_example(index, row) for index, row in enumerate(source)]
            else:
                examples = load_examples(
                    source, tokenizer, adapter=self.adapters.get(name), max_length=self.max_length,
                    max_examples=self.max_examples,
                )
        except (OSError, ValueError, KeyError) as error:
            raise type(error)(f"probe set {name!r} ({_describe(source)}): {error}") from error
        if not examples:
            raise ValueError(f"probe set {name!r} ({_describe(source)}) is empty; give it at least one example.")
        examples = examples[: self.max_examples]
        pad_id = getattr(tokenizer, "pad_token_id", None) or 0
        return collate_batches(examples, pad_id, self.batch_size)

    def _find_model(self, pl_module: "L.LightningModule") -> PreTrainedModel:
        if self.model_attribute is not None:
            model = getattr(pl_module, self.model_attribute, None)
            if not isinstance(model, PreTrainedModel):
                raise ValueError(
                    f"{type(pl_module).__name__}.{self.model_attribute} is {type(model).__name__}, "
                    "not a transformers PreTrainedModel; name the attribute that holds it."
                )
            return model
        found = {name: child for name, child in pl_module.named_children() if isinstance(child, PreTrainedModel)}
        if len(found) != 1:
            raise ValueError(
                f"HeadActivationCallback found {len(found)} transformers models on {type(pl_module).__name__} "
                f"({sorted(found)}); pass model_attribute= the one to probe."
            )
        return next(iter(found.values()))

    @override
    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._probe_if_due(trainer, pl_module)

    @override
    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", *args: Any) -> None:
        # global_step counts optimizer steps: between micro-batches of one accumulation it does not
        # move, so a step is probed once, after its optimizer update.
        self._probe_if_due(trainer, pl_module)

    @override
    def on_train_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if self.probe_at_end and trainer.global_step not in self.done_steps:
            self._probe(trainer, pl_module)

    def _probe_if_due(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        step = trainer.global_step
        if self.is_scheduled(step) and step not in self.done_steps:
            self._probe(trainer, pl_module)

    def _probe(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        step = trainer.global_step
        model = self._find_model(pl_module)
        patterns, metrics = {}, {}
        for name, batches in self._batches.items():
            started = time.perf_counter()
            scores = score_heads(model, [{k: v.to(pl_module.device) for k, v in b.items()} for b in batches])
            seconds = time.perf_counter() - started
            pattern = scores.pattern.cpu()
            if step == 0 or name not in self.base_patterns:
                self.base_patterns.setdefault(name, pattern)
            patterns[name] = pattern
            probe_metrics = self._probe_metrics(name, pattern, self.base_patterns[name], scores.losses, seconds)
            metrics.update(probe_metrics)
            if trainer.is_global_zero:
                save_pattern(
                    self._resolved_save_dir, name, step, pattern,
                    per_example=scores.per_example.cpu() if self.per_example else None,
                    losses=scores.losses.cpu() if self.per_example else None,
                    metrics={tag.replace(f"/{name}/", "/"): value for tag, value in probe_metrics.items()},
                    model={"name_or_path": model.config.name_or_path, "class": type(model).__name__},
                )
        changes = {name: (patterns[name] - self.base_patterns[name]).numpy() for name in patterns}
        correlation = None
        if len(changes) > 1 and all(np.ptp(change) > 0 for change in changes.values()):
            correlation = stats.change_correlation(changes)
            names, matrix = correlation
            for i, first in enumerate(names):
                for j in range(i + 1, len(names)):
                    metrics[f"head_similarity/{first}/{names[j]}"] = float(matrix[i, j])
        self.done_steps.append(step)
        self._log(trainer, step, metrics, patterns, changes, correlation)

    @staticmethod
    def _probe_metrics(
        name: str, pattern: torch.Tensor, base: torch.Tensor, losses: torch.Tensor, seconds: float
    ) -> dict[str, float]:
        values = pattern.numpy()
        return {
            f"head_activation/{name}/gini": stats.gini(values),
            f"head_activation/{name}/cv": stats.coefficient_of_variation(values),
            f"head_activation/{name}/kurtosis": stats.kurtosis(values),
            f"head_activation/{name}/mean": float(values.mean()),
            f"head_drift/{name}/pearson": stats.pearson(values, base.numpy()),
            f"head_drift/{name}/mse": stats.mse(values, base.numpy()),
            f"head_probe/{name}/loss": float(losses.mean()),
            f"head_probe/{name}/seconds": seconds,
        }

    @rank_zero_only
    def _log(
        self, trainer: "L.Trainer", step: int, metrics: dict[str, float], patterns: dict[str, torch.Tensor],
        changes: dict[str, np.ndarray], correlation: tuple[list[str], np.ndarray] | None,
    ) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            if not isinstance(logger, TensorBoardLogger):
                continue
            writer = logger.experiment
            if step == 0:
                writer.add_custom_scalars(_drift_layout())
            for name, pattern in patterns.items():
                if self.log_histograms:
                    writer.add_histogram(f"head_activation/{name}/scores", pattern.flatten(), step)
                if self.log_images:
                    _add_figure(writer, f"head_activation/{name}/pattern",
                                pattern_heatmap(pattern.numpy(), f"{name} head activation, step {step}"), step)
                    if step > 0:
                        _add_figure(writer, f"head_activation/{name}/change",
                                    pattern_heatmap(changes[name], f"{name} change since step 0, step {step}",
                                                    diverging=True), step)
            if self.log_images and correlation is not None:
                _add_figure(writer, "head_similarity/change_correlation",
                            correlation_heatmap(*correlation, f"correlation of pattern changes, step {step}"), step)
            writer.flush()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"base_patterns": dict(self.base_patterns), "done_steps": list(self.done_steps)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_patterns = dict(state_dict["base_patterns"])
        self.done_steps = list(state_dict["done_steps"])


def _checked_example(index: int, row: Any) -> dict[str, list[int]]:
    if not isinstance(row, Mapping) or "input_ids" not in row or "labels" not in row:
        raise ValueError(f"pre-tokenized example {index} needs 'input_ids' and 'labels' lists")
    if len(row["input_ids"]) != len(row["labels"]):
        raise ValueError(
            f"pre-tokenized example {index}: {len(row['input_ids'])} input_ids but {len(row['labels'])} labels"
        )
    return {"input_ids": list(row["input_ids"]), "labels": list(row["labels"])}


def _describe(source: ProbeSource) -> str:
    return f"{len(source)} pre-tokenized examples" if isinstance(source, list) else repr(source)


def _drift_layout() -> dict[str, Any]:
    """TensorBoard custom-scalars layout: every probe's drift on one chart per statistic."""
    return {
        "head_drift": {
            "pearson vs base": ["Multiline", [r"head_drift/.*/pearson"]],
            "mse vs base": ["Multiline", [r"head_drift/.*/mse"]],
        },
        "head_activation": {
            statistic: ["Multiline", [rf"head_activation/.*/{statistic}"]] for statistic in ("gini", "cv", "kurtosis")
        },
    }


def _add_figure(writer: Any, tag: str, figure: Any, step: int) -> None:
    writer.add_figure(tag, figure, step, close=False)
    plt.close(figure)
