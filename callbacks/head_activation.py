"""HeadActivationCallback: head-activation patterns at chosen optimizer steps, logged and saved.

At each scheduled step the callback scores every probe set with `lightning_sft.scorer.patterns.score_heads`
(mean over examples of sum_ij |A_ij * dL/dA_ij| per head, a [num_layers, num_heads] pattern) and logs,
with a TensorBoardLogger, each probe as its own run `<log_dir>/probe_<probe>/` (one colour per probe):

    concentration/{gini,cv,kurtosis,mean}   concentration (kurtosis: Pearson's, not excess)
    drift/{pearson,mse}                   against the pattern at step 0 (the base model;
                                               step 0 is always probed, whatever the schedule)
    head_probe/{loss,seconds}                  mean probe loss (nats/token), wall time of the probe
    histograms: head_activation/scores; at the end of training, images (at most 10 steps, step 0 and
    the last among them, colour limits fixed per probe): head_activation/{pattern,change}

and in the logger's own run `head_similarity/<a>/<b>` (correlation of the two probes' pattern changes),
the custom-scalars layout (`loggers.scalars_layout`: one chart per statistic, a line per probe), and at
the end the images head_similarity/change_correlation and drift/figure (Pearson and MSE against
step, a line per probe). Other loggers get `<group>/<probe>/<statistic>` tags through `log_metrics`;
WandbLogger and MLFlowLogger also get the images, a probe's as `head_activation/<probe>/{pattern,change}`.
Every pattern is saved with `lightning_sft.storage.save_pattern` (read back with `load_patterns`).

One run keeps one patterns directory: a run resumed with `ckpt_path` restores the directory, its run id and
the base patterns from the checkpoint and goes on writing there (not into the new `<log_dir>`), so the
directory holds step 0 and every later step. A fresh run refuses a directory that already holds patterns.
A checkpoint is untrusted: the restored directory is used only where it lies inside the trainer's
`default_root_dir` (a run folder copied elsewhere writes to its copy, and says so), or where it is the
`save_dir` passed; it must hold this run's id and, at step 0, the restored base patterns.
"""

import struct
import time
import uuid
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from typing_extensions import override

from callbacks.loggers import IMAGE_LOGGERS, log_image, scalars_layout
from callbacks.schedule import Schedule
from lightning_sft import event_crc, stats
from lightning_sft.data import collate_batches, load_examples
from lightning_sft.labels import IGNORE_INDEX
from lightning_sft.models import model_of, pad_token_id, tokenizer_for
from lightning_sft.scorer.patterns import score_heads
from lightning_sft.plots import CorrelationHeatmap, PatternHeatmap, drift_figure, figure_pixels, pattern_limits
from lightning_sft.storage import (INDEX_NAME, check_probe_name, load_index, load_pattern_file, pattern_path,
                                   save_pattern)

ProbeSource = str | dict[str, Any] | list[dict[str, list[int]]]
PER_PROBE_GROUPS = ("concentration", "drift", "head_activation", "head_probe")  # tags <group>/<probe>/<statistic>
MAX_IMAGE_STEPS = 10  # TensorBoard's default number of images kept per tag


class HeadActivationCallback(Callback):
    """Scores attention heads on probe sets during training and logs how their pattern moves.

    Args:
        probes: probe name -> a JSONL/JSON/Parquet/CSV file (formatted like training data), a dict of
            `datasets.load_dataset` arguments, or a list of pre-tokenized examples
            `{"input_ids": [...], "labels": [...]}` (labels -100 where not supervised).
        steps: explicit optimizer steps to probe at. Step 0 (the base model, before any update) is probed
            whatever the schedule: drift and similarity are measured from it.
        every_n_steps: probe at 0, n, 2n, ... (instead of `steps`).
            With neither, log-spaced: 0, 1, 2, 4, 8, ... (patterns move fastest early).
        probe_at_end: also probe after the last optimizer step, so "after SFT" is always measured.
        save_dir: where patterns are saved; default `<trainer.log_dir>/head_patterns` of the run's first
            fit (a resumed fit keeps writing there). A fresh run refuses a directory holding patterns.
        max_examples: examples used per probe set (the first ones).
        batch_size: probe examples scored per forward/backward pass, per process.
        max_length: truncation length in tokens for file/dataset probes.
        adapters: probe name -> an adapter of `lightning_sft.data.adapters.ADAPTERS` (e.g. {"gsm8k": "gsm8k"}).
        tokenizer: id/directory for file probes; default the LightningModule's `tokenizer` attribute.
        model_attribute: the LightningModule attribute holding the transformers model, dotted when nested
            ("backbone.model"); default: the one direct attribute that is a `PreTrainedModel`.
        log_images: heatmap images of each pattern and its change, the drift figure (drawn at the end).
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
            check_probe_name(name)
            if name.lower() in folded:
                raise ValueError(f"probe names {folded[name.lower()]!r} and {name!r} collide (case-insensitively).")
            folded[name.lower()] = name
        self.schedule = Schedule(steps, every_n_steps, "HeadActivationCallback")
        if batch_size < 1 or (max_examples is not None and max_examples < 1) or max_length < 2:
            raise ValueError(
                f"batch_size={batch_size} and max_examples={max_examples} must be >= 1, max_length={max_length} >= 2."
            )
        if model_attribute is not None and not all(part.isidentifier() for part in model_attribute.split(".")):
            raise ValueError(
                f"model_attribute={model_attribute!r} is not an attribute path; name the LightningModule attribute "
                "holding the model, dotted when nested, e.g. 'model' or 'backbone.model'."
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
        self.run_id: str | None = None  # names the run in the patterns index; restored on resume
        self._batches: dict[str, list[dict[str, torch.Tensor]]] = {}
        self._resolved_save_dir: Path | None = None
        self._restored: dict[str, str] | None = None  # the checkpoint's patterns directory and root directory
        self._root_dir: Path | None = None
        # what `_log` kept for `_log_figures` (rank 0): probe -> step -> [num_layers, num_heads]
        self._logged_patterns: dict[str, dict[int, np.ndarray]] = {}
        self._logged_changes: dict[str, dict[int, np.ndarray]] = {}
        self._drift: dict[str, dict[int, tuple[float, float]]] = {}  # probe -> step -> (pearson, mse)
        self._correlations: dict[int, tuple[list[str], np.ndarray]] = {}
        self._layouts_written: set[str] = set()  # log_dirs that hold the custom-scalars layout
        self._writers: dict[tuple[str, str], SummaryWriter] = {}  # (log_dir, probe) -> the probe's run

    @property
    @override
    def state_key(self) -> str:
        # Neither the schedule nor save_dir is in the key: the base pattern belongs to the run, so a resume
        # with another schedule (or a moved patterns directory) restores it.
        return self._generate_state_key(probes=sorted(self.probes))

    def is_scheduled(self, step: int) -> bool:
        """Whether optimizer step `step` (0 = before any update, always probed) is on the schedule."""
        return step == 0 or self.schedule.is_due(step)

    @override
    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        if stage != "fit":
            return
        event_crc.use_for_event_files()  # checksums of every event record from C (the end's images most)
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # trainer.log_dir: collective, all ranks
        self._root_dir = Path(trainer.default_root_dir).resolve()
        self._resolved_save_dir = (Path(self.save_dir) if self.save_dir else log_dir / "head_patterns").absolute()
        for other in trainer.callbacks:
            if other is self or not isinstance(other, HeadActivationCallback):
                continue
            shared = sorted(set(other.probes) & set(self.probes))
            if other.state_key == self.state_key or (shared and other._resolved_save_dir == self._resolved_save_dir):
                raise ValueError(
                    f"two HeadActivationCallbacks probe {shared} (into {other._resolved_save_dir} and "
                    f"{self._resolved_save_dir}): their patterns or checkpoint states (keyed by the probe names) "
                    "would overwrite each other. Merge them into one callback, or give one of them other probe "
                    "names (and its own save_dir if it shares one)."
                )
        if not trainer.loggers:
            rank_zero_warn(f"HeadActivationCallback: no logger; patterns are still saved to {self._resolved_save_dir}.")
        tokenizer = self._find_tokenizer(pl_module)
        for name, source in self.probes.items():
            self._batches[name] = self._load_probe(name, source, tokenizer)

    def _find_tokenizer(self, pl_module: "L.LightningModule") -> Any:
        """The tokenizer for file/dataset probes (`models.tokenizer_for`); None when every probe is pre-tokenized."""
        if all(isinstance(source, list) for source in self.probes.values()) and self.tokenizer is None:
            return getattr(pl_module, "tokenizer", None)
        return tokenizer_for(self.tokenizer, pl_module, "HeadActivationCallback (file/dataset probes)")

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
        return collate_batches(examples, 0 if tokenizer is None else pad_token_id(tokenizer), self.batch_size)

    @override
    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        # Here, not in setup: a checkpoint is restored after setup (under DeepSpeed after on_fit_start).
        _check_vocabulary(self.probes, model_of(pl_module, self.model_attribute, "HeadActivationCallback"))
        self._open_store(trainer)
        self.schedule.warn_beyond(trainer, "probed")
        self._probe_if_due(trainer, pl_module)

    def _open_store(self, trainer: "L.Trainer") -> None:
        """Fixes the run id and patterns directory (restored ones on resume) and checks, on rank 0 for all
        ranks, that the directory holds this run's patterns and no other's."""
        step = trainer.global_step
        if self.run_id is None:
            if step > 0:
                raise ValueError(
                    f"HeadActivationCallback (probes {sorted(self.probes)}): resuming at step {step} from a "
                    "checkpoint that holds no state of this callback, so the base model's pattern (step 0), "
                    "which drift is measured from, is unknown. Resume with the callback's probe names as when the "
                    "checkpoint was written, or start the run from step 0."
                )
            # one run id per fit: callbacks of one trainer may share a directory
            siblings = [other.run_id for other in trainer.callbacks
                        if isinstance(other, HeadActivationCallback) and other.run_id is not None]
            self.run_id = siblings[0] if siblings else trainer.strategy.broadcast(uuid.uuid4().hex, src=0)
        elif self.save_dir is None and self._restored is not None:
            self._resolved_save_dir = self._restored_store(trainer)
        problem = self._store_problem() if trainer.is_global_zero else None
        problem = trainer.strategy.broadcast(problem, src=0)
        if problem is not None:
            raise ValueError(problem)

    def _restored_store(self, trainer: "L.Trainer") -> Path:
        """The patterns directory of a resumed run without `save_dir`: the checkpoint's, where it lies inside
        this run's `default_root_dir`; else the same place inside this root when the run folder was copied or
        moved there; refused otherwise (a checkpoint does not choose where a run writes)."""
        root = Path(trainer.default_root_dir).resolve()
        restored, old_root = Path(self._restored["save_dir"]), self._restored.get("root_dir")
        if root in restored.resolve().parents:
            return restored
        if old_root is not None and Path(old_root) in restored.parents and ".." not in restored.parts:
            moved = root / restored.relative_to(old_root)
            if (moved / INDEX_NAME).is_file():
                rank_zero_info(f"HeadActivationCallback: the checkpoint's patterns directory {restored} lies outside "
                               f"this run's default_root_dir {root}; this resumed run writes its patterns to {moved}.")
                return moved
        raise ValueError(
            f"HeadActivationCallback: the checkpoint {trainer.ckpt_path} names the patterns directory {restored}, "
            f"which lies outside this run's default_root_dir {root} (and {root} holds no copy of it); a checkpoint "
            f"does not choose where a run writes. Pass save_dir= the directory holding this run's patterns (run id "
            f"{self.run_id}), or default_root_dir= the folder of the run the checkpoint belongs to."
        )

    def _store_problem(self) -> str | None:
        """Why the patterns directory cannot take this run's patterns, or None when it can."""
        directory = self._resolved_save_dir
        if not (directory / INDEX_NAME).is_file():
            if not self.done_steps:
                return None
            return (
                f"HeadActivationCallback: {directory} holds no patterns, but this run (run id {self.run_id}) probed "
                f"steps {self.done_steps} into it before the checkpoint; pass save_dir= the directory holding them."
            )
        try:
            recorded = load_index(directory).get("run_id")
        except ValueError as error:
            return f"HeadActivationCallback: {error}"
        if recorded != self.run_id:
            return (
                f"HeadActivationCallback: {directory} already holds the patterns of another run (run id {recorded}); "
                f"this run (run id {self.run_id}) would mix with them. Pass a new save_dir, or remove that directory."
            )
        return self._base_problem(directory) if self.done_steps else None

    def _base_problem(self, directory: Path) -> str | None:
        """Why the restored base patterns are not the step-0 patterns saved in `directory`, or None."""
        for name in self.probes:
            path = pattern_path(directory, name, 0)
            try:
                saved = load_pattern_file(path)["pattern"] if path.is_file() else None
            except ValueError as error:
                return f"HeadActivationCallback: {error}"
            restored = self.base_patterns.get(name)
            if saved is None or restored is None or not torch.equal(saved, restored):
                return (
                    f"HeadActivationCallback: the checkpoint's base pattern of probe {name!r} is not the step-0 "
                    f"pattern {path} of this run; drift is measured from step 0 only. Resume from a checkpoint of "
                    "this run, or start the run from step 0."
                )
        return None

    @override
    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", *args: Any) -> None:
        # global_step counts optimizer steps: between micro-batches of one accumulation it does not
        # move, so a step is probed once, after its optimizer update.
        self._probe_if_due(trainer, pl_module)

    @override
    def on_train_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if self.probe_at_end and trainer.global_step not in self.done_steps:
            self._probe(trainer, pl_module)
        self._log_figures(trainer)

    @override
    def on_exception(self, trainer: "L.Trainer", pl_module: "L.LightningModule", exception: BaseException) -> None:
        self._log_figures(trainer)  # an interrupted run keeps the figures of what it probed

    def _probe_if_due(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        step = trainer.global_step
        if self.is_scheduled(step) and step not in self.done_steps:
            self._probe(trainer, pl_module)

    def _probe(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        step = trainer.global_step
        model = model_of(pl_module, self.model_attribute, "HeadActivationCallback")
        patterns, metrics = {}, {}
        for name, batches in self._batches.items():
            started = time.perf_counter()
            scores = score_heads(model, [{k: v.to(pl_module.device) for k, v in b.items()} for b in batches])
            seconds = time.perf_counter() - started
            pattern = scores.pattern.cpu()
            if not (torch.isfinite(pattern).all() and torch.isfinite(scores.losses).all()):
                raise FloatingPointError(
                    f"HeadActivationCallback: probe {name!r} at step {step}: the model has diverged (probe loss "
                    f"{float(scores.losses.mean())}, {int((~torch.isfinite(pattern)).sum())} of {pattern.numel()} "
                    "head scores not finite). Lower the learning rate or resume from an earlier checkpoint."
                )
            self.base_patterns.setdefault(name, pattern)  # step 0 comes first, or is restored
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
                    run_id=self.run_id,
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
            f"concentration/{name}/gini": stats.gini(values),
            f"concentration/{name}/cv": stats.coefficient_of_variation(values),
            f"concentration/{name}/kurtosis": stats.kurtosis(values),
            f"concentration/{name}/mean": float(values.mean()),
            f"drift/{name}/pearson": stats.pearson(values, base.numpy()),
            f"drift/{name}/mse": stats.mse(values, base.numpy()),
            f"head_probe/{name}/loss": float(losses.mean()),
            f"head_probe/{name}/seconds": seconds,
        }

    @rank_zero_only
    def _log(
        self, trainer: "L.Trainer", step: int, metrics: dict[str, float], patterns: dict[str, torch.Tensor],
        changes: dict[str, np.ndarray], correlation: tuple[list[str], np.ndarray] | None,
    ) -> None:
        """Scalars and histograms now; heatmaps and the drift figure are kept for `_log_figures` at the end.

        With a TensorBoardLogger each probe's scalars go to its own run `<log_dir>/probe_<name>/` under
        the probe-free tags of the saved index (`drift/pearson`, ...), so TensorBoard draws one
        colour per probe; other loggers get every tag through `log_metrics`.
        """
        for name, pattern in patterns.items():
            self._logged_patterns.setdefault(name, {})[step] = pattern.numpy()
            self._logged_changes.setdefault(name, {})[step] = changes[name]
            self._drift.setdefault(name, {})[step] = (metrics[f"drift/{name}/pearson"],
                                                      metrics[f"drift/{name}/mse"])
        if correlation is not None:
            self._correlations[step] = correlation
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                logger.log_metrics(metrics, step=step)
                continue
            shared = {tag: value for tag, value in metrics.items() if _probe_of(tag, patterns) is None}
            logger.log_metrics(shared, step=step)
            if logger.log_dir not in self._layouts_written:  # the first log of this run, resumed ones too
                logger.experiment.add_custom_scalars(scalars_layout(trainer.callbacks))
                self._layouts_written.add(logger.log_dir)
            for name, pattern in patterns.items():
                writer = self._probe_writer(logger, name)
                for tag, value in metrics.items():
                    if _probe_of(tag, patterns) == name:
                        writer.add_scalar(tag.replace(f"/{name}/", "/"), value, step)
                if self.log_histograms:
                    writer.add_histogram("head_activation/scores", pattern.flatten(), step)
                writer.flush()
            logger.experiment.flush()

    def _probe_writer(self, logger: TensorBoardLogger, name: str) -> SummaryWriter:
        key = (logger.log_dir, name)
        if key not in self._writers:
            self._writers[key] = SummaryWriter(str(Path(logger.log_dir) / f"probe_{name}"))
        return self._writers[key]

    @rank_zero_only
    def _log_figures(self, trainer: "L.Trainer") -> None:
        """Heatmaps at up to `MAX_IMAGE_STEPS` of the logged steps, and the drift figure, then closes writers.

        TensorBoard gets each probe's heatmaps in its own run, W&B and MLflow as `head_activation/<probe>/<kind>`
        (`loggers.log_image`). Drawn once all steps are known, so each probe's colour limits span all its
        drawn steps (colours compare across steps) and step 0 and the last step are always among the drawn ones.
        """
        loggers = [logger for logger in trainer.loggers if isinstance(logger, IMAGE_LOGGERS)]
        if self.log_images and loggers and self._logged_patterns:
            for probe, tag, step, pixels in self._images():
                for logger in loggers:
                    if isinstance(logger, TensorBoardLogger):
                        add_png(self._probe_writer(logger, probe) if probe else logger.experiment, tag, pixels, step)
                    else:
                        log_image(logger, tag.replace("/", f"/{probe}/", 1) if probe else tag, pixels, step)
        for logger in loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.flush()
        for writer in self._writers.values():
            writer.close()
        for kept in (self._writers, self._logged_patterns, self._logged_changes, self._drift, self._correlations):
            kept.clear()  # a later fit with this callback draws its own steps only

    def _images(self) -> Iterator[tuple[str | None, str, int, np.ndarray]]:
        """(probe or None, tag, step, RGB pixels) of every image: each probe's heatmaps (rendered once per
        kind; frames only colour the cells, `plots.PatternHeatmap`), the change correlations, the drift figure."""
        shape = tuple(next(iter(self.base_patterns.values())).shape)  # every probe's [layers, heads]
        heatmaps = {kind: PatternHeatmap(shape, diverging=kind == "change") for kind in ("pattern", "change")}
        for name, by_step in self._logged_patterns.items():
            steps = image_steps(sorted(by_step))
            changed = [s for s in steps if np.ptp(self._logged_changes[name][s]) > 0]
            for kind, values, drawn, title in (
                ("pattern", by_step, steps, f"{name}: head activation"),
                ("change", self._logged_changes[name], changed, f"{name}: change since step 0"),
            ):
                if not drawn:
                    continue
                heatmaps[kind].draw(pattern_limits([values[s] for s in drawn], diverging=kind == "change"), title)
                for step in drawn:
                    yield name, f"head_activation/{kind}", step, heatmaps[kind].frame(values[step])
        if self._correlations:
            steps = image_steps(sorted(self._correlations))
            heatmap = CorrelationHeatmap(self._correlations[steps[0]][0])
            for step in steps:
                yield None, "head_similarity/change_correlation", step, heatmap.frame(
                    self._correlations[step][1], f"correlation of pattern changes, step {step}")
        last_step = max(max(by_step) for by_step in self._drift.values())
        yield None, "drift/figure", last_step, figure_pixels(drift_figure(self._drift))

    # The state goes into the checkpoint from on_save_checkpoint, not by overriding `state_dict`: Lightning
    # checks at Trainer construction that callbacks overriding `state_dict` have distinct state keys, with a
    # generic message; two callbacks with the same key get setup's message, which says what to change.
    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint keeps: base patterns, probed steps, run id, patterns directory and the trainer's
        `default_root_dir` (to find the directory in a copy of the run folder)."""
        return {"base_patterns": dict(self.base_patterns), "done_steps": list(self.done_steps),
                "run_id": self.run_id, "save_dir": str(self._resolved_save_dir), "root_dir": str(self._root_dir)}

    @override
    def on_save_checkpoint(self, trainer: "L.Trainer", pl_module: "L.LightningModule", checkpoint: dict) -> None:
        checkpoint["callbacks"][self.state_key] = self.checkpoint_state()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_patterns = dict(state_dict["base_patterns"])
        self.done_steps = list(state_dict["done_steps"])
        self.run_id = state_dict["run_id"]
        self._restored = {key: state_dict[key] for key in ("save_dir", "root_dir") if key in state_dict}


def _token_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(token, int) and not isinstance(token, bool) for token in value)


def _checked_example(index: int, row: Any) -> dict[str, list[int]]:
    if not isinstance(row, Mapping) or not all(_token_list(row.get(key)) for key in ("input_ids", "labels")):
        has = sorted(row) if isinstance(row, Mapping) else f"a {type(row).__name__}"
        raise ValueError(f"pre-tokenized example {index} needs 'input_ids' and 'labels' lists of integers (labels"
                         f" {IGNORE_INDEX} where unsupervised); it has {has}")
    if len(row["input_ids"]) != len(row["labels"]):
        raise ValueError(
            f"pre-tokenized example {index}: {len(row['input_ids'])} input_ids but {len(row['labels'])} labels"
        )
    return {"input_ids": list(row["input_ids"]), "labels": list(row["labels"])}


def _check_vocabulary(probes: Mapping[str, ProbeSource], model: Any) -> None:
    """Refuse a pre-tokenized token id (or label) outside the model's vocabulary, which would fail inside the
    embedding lookup (on a GPU as a device-side assert) at the first probe."""
    size = model.get_input_embeddings().num_embeddings
    for name, source in probes.items():
        for index, row in enumerate(source if isinstance(source, list) else []):
            labels = [label for label in row["labels"] if label != IGNORE_INDEX]
            if outside := [token for token in row["input_ids"] + labels if not 0 <= token < size]:
                raise ValueError(
                    f"probe set {name!r} ({_describe(source)}): pre-tokenized example {index} holds token id"
                    f" {outside[0]}, outside the model's vocabulary of {size} ids (0 to {size - 1}); tokenize it"
                    " with this model's tokenizer"
                )


def _describe(source: ProbeSource) -> str:
    return f"{len(source)} pre-tokenized examples" if isinstance(source, list) else repr(source)


def _probe_of(tag: str, patterns: Mapping[str, Any]) -> str | None:
    """The probe a per-probe tag `<group>/<probe>/<statistic>` belongs to; None for `head_similarity/<a>/<b>`."""
    group, _, rest = tag.partition("/")
    name = rest.rpartition("/")[0]
    return name if group in PER_PROBE_GROUPS and name in patterns else None


def add_png(writer: SummaryWriter, tag: str, pixels: np.ndarray, step: int) -> None:
    """Log `pixels` [height, width, 3] uint8 RGB as TensorBoard image `tag` at `step` (a PNG, `png_bytes`).

    `SummaryWriter.add_image` takes longer for the same pixels (Pillow's PNG writer at level 6, and more
    conversions), which matters for a hundred heatmaps at the end of a run.
    """
    height, width, channels = pixels.shape
    image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=png_bytes(pixels))
    # the writer's event-file writer, as its own add_image uses it
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


def png_bytes(pixels: np.ndarray) -> bytes:
    """`pixels` [height, width, 3] uint8 RGB as a PNG: every row filtered "Up" (its difference to the row
    above, zero wherever the heatmap's flat colours repeat), deflated at zlib level 3.

    About three times faster than Pillow's PNG writer (at level 1), whose per-row adaptive filter choice
    dominates its time, for files no larger: the event file's writer checksums every byte, so size counts.
    """
    height, width, channels = pixels.shape
    if pixels.dtype != np.uint8 or channels != 3:
        raise ValueError(f"png_bytes takes [height, width, 3] uint8 RGB; got {pixels.dtype} {pixels.shape}")
    rows = np.empty((height, 1 + width * channels), np.uint8)
    rows[:, 0] = 2  # PNG filter type 2, "Up" (the first row's "above" is zeros)
    flat = pixels.reshape(height, width * channels)
    rows[0, 1:] = flat[0]
    np.subtract(flat[1:], flat[:-1], out=rows[1:, 1:])  # modulo 256, as PNG defines it

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, deflate, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 3))
            + chunk(b"IEND", b""))


def image_steps(steps: list[int]) -> list[int]:
    """At most `MAX_IMAGE_STEPS` of the sorted `steps`, spread evenly by index, always the first and last.

    TensorBoard keeps `MAX_IMAGE_STEPS` images per tag by default and drops a random earlier one for each
    image beyond that, so logging more would hide the step-0 heatmap unless the viewer passes
    `--samples_per_plugin images=N`.
    """
    if len(steps) <= MAX_IMAGE_STEPS:
        return list(steps)
    return [steps[i] for i in np.linspace(0, len(steps) - 1, MAX_IMAGE_STEPS).round().astype(int)]
