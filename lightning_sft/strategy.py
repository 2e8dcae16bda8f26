"""DeepSpeed ZeRO for SFT: Lightning's `DeepSpeedStrategy`, made to run on CPU too (gloo), plus presets.

Lightning's strategy refuses non-CUDA accelerators. The three places that assume CUDA are the
accelerator check in `setup_environment`, the device-index validation in `setup_distributed`, and
`device_rank=root_device.index` handed to `deepspeed.initialize` (a CPU device has no index, so
DeepSpeed would think it runs alone). `DeepSpeedStrategy` below skips the first two on CPU and hands
DeepSpeed the local rank, so the real ZeRO-2/ZeRO-3 code path runs in tests on CPU processes. On GPUs
it behaves exactly like Lightning's; the registered names below work as `trainer.strategy` in YAML.
"""

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch.strategies.deepspeed as lightning_deepspeed
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from typing_extensions import override

ZERO_STAGES = (0, 1, 2, 3)

# name -> DeepSpeedStrategy keyword arguments; usable as `trainer.strategy: sft_zero2` in YAML.
PRESETS: dict[str, dict[str, Any]] = {
    "sft_zero2": {"stage": 2},
    "sft_zero2_offload": {"stage": 2, "offload_optimizer": True},
    "sft_zero3": {"stage": 3},
    "sft_zero3_offload": {"stage": 3, "offload_optimizer": True, "offload_parameters": True},
}


class DeepSpeedStrategy(lightning_deepspeed.DeepSpeedStrategy):
    """Lightning's DeepSpeed strategy that also runs on CPU processes (gloo backend).

    Takes every argument of `lightning.pytorch.strategies.DeepSpeedStrategy`; `stage` is the ZeRO
    stage (0-3). Under ZeRO-3 the model is built inside `deepspeed.zero.Init` (SFTModule builds it in
    `configure_model`), so no rank ever holds the whole model.
    """

    strategy_name = "sft_deepspeed"

    def __init__(self, *args: Any, stage: int = 2, **kwargs: Any) -> None:
        if stage not in ZERO_STAGES:
            raise ValueError(f"DeepSpeed ZeRO stage={stage!r} does not exist; pass one of {ZERO_STAGES}.")
        super().__init__(*args, stage=stage, **kwargs)

    @property
    def _on_cpu(self) -> bool:
        return not isinstance(self.accelerator, CUDAAccelerator)

    @override
    def setup_environment(self) -> None:
        if self._on_cpu:
            DDPStrategy.setup_environment(self)  # skip Lightning's CUDA-only check
        else:
            super().setup_environment()

    @override
    def setup_distributed(self) -> None:
        if not self._on_cpu:
            return super().setup_distributed()
        lightning_deepspeed.reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @contextmanager
    def _device_rank_for_cpu(self) -> Iterator[None]:
        """Hand `deepspeed.initialize` the local rank where Lightning passes the (absent) CPU index."""
        import deepspeed

        initialize = deepspeed.initialize

        def initialize_with_rank(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("args") is not None and kwargs["args"].device_rank is None:
                kwargs["args"] = argparse.Namespace(device_rank=self.local_rank)
            return initialize(*args, **kwargs)

        deepspeed.initialize = initialize_with_rank
        try:
            yield
        finally:
            deepspeed.initialize = initialize

    @override
    def _setup_model_and_optimizer(self, *args: Any, **kwargs: Any) -> Any:
        with self._device_rank_for_cpu():
            return super()._setup_model_and_optimizer(*args, **kwargs)

    @override
    def _initialize_deepspeed_inference(self, model: Any) -> None:
        with self._device_rank_for_cpu():
            super()._initialize_deepspeed_inference(model)

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: Any) -> None:
        for name, settings in PRESETS.items():
            strategy_registry.register(name, cls, description=f"lightning-sft DeepSpeed {settings}", **settings)


DeepSpeedStrategy.register_strategies(StrategyRegistry)
