"""The training loader whose place in the epoch survives a checkpoint: `SFTDataModule.train_dataloader()` is a
`ResumableDataLoader`, which Lightning's fit loop saves into the checkpoint (`state_dict`: epoch and batches
consumed) and restores before the resumed epoch, so a run resumed mid-epoch sees exactly the batches the
uninterrupted run would have seen.
"""

from collections.abc import Iterator
from itertools import islice
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, DistributedSampler
from typing_extensions import override


class ResumableSampler(DistributedSampler):
    """`DistributedSampler` (shuffled by seed + epoch, sharded by rank) that can start part-way into an epoch.

    Being a `DistributedSampler`, Lightning leaves it in place instead of injecting its own
    (`use_distributed_sampler` is then not needed) and calls its `set_epoch` at each epoch start.
    """

    def __init__(self, dataset_size: int, *, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(range(dataset_size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.start = 0  # first sample (of this rank's share) the next iteration yields

    @override
    def __iter__(self) -> Iterator[int]:
        return islice(super().__iter__(), self.start, None)


class ResumableDataLoader(DataLoader):
    """A training DataLoader whose place in the epoch survives a checkpoint.

    Lightning's fit loop saves `state_dict()` of stateful train dataloaders into the checkpoint and calls
    `load_state_dict()` before iterating on resume (`FitLoop.on_save_checkpoint`,
    `_load_combined_loader_states`). The state is (epoch, batches consumed in it); batches are counted as
    they are handed to the loop (not as workers prefetch them). On resume the iteration of that same epoch
    starts after the consumed batches; any other epoch starts from its beginning.

    Resume from checkpoints written during training (`ModelCheckpoint(every_n_train_steps=...)`, or
    `trainer.save_checkpoint` from a callback): one written after `fit` returned holds Lightning's
    end-of-run loop counters, which send the resumed run to the next epoch whatever the data state says.
    """

    def __init__(self, dataset: list[dict], *, sampler: ResumableSampler, batch_size: int, **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self._epoch = 0
        self._batches_consumed = 0
        self._resume_state: dict | None = None

    @override
    def __iter__(self) -> Iterator[Any]:
        # A generator: this body runs at the first `next`, after Lightning's `set_epoch` for the epoch.
        epoch, skip = self.sampler.epoch, 0
        if self._resume_state is not None and self._resume_state["epoch"] == epoch:
            skip = self._resume_state["batches_consumed"]
        self._resume_state = None
        self.sampler.start = skip * self.batch_size
        self._epoch, self._batches_consumed = epoch, skip
        for batch in super().__iter__():
            self._batches_consumed += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Where the loop is: `epoch`, `batches_consumed` in it, and the layout they count in."""
        position = self._resume_state or {"epoch": self._epoch, "batches_consumed": self._batches_consumed}
        return {
            **position,
            "batch_size": self.batch_size,
            "num_replicas": self.sampler.num_replicas,
            "dataset_size": len(self.dataset),
            "seed": self.sampler.seed,
        }

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Resume after `batches_consumed` batches of `epoch` at the next iteration of that epoch.

        With another batch size, device count, seed or dataset, the exact order cannot be restored: the
        position is then converted by samples consumed over all ranks, with a warning.
        """
        batches = state_dict["batches_consumed"]
        saved = {key: state_dict[key] for key in ("batch_size", "num_replicas", "dataset_size", "seed")}
        current = {
            "batch_size": self.batch_size, "num_replicas": self.sampler.num_replicas,
            "dataset_size": len(self.dataset), "seed": self.sampler.seed,
        }
        if saved != current:
            samples = batches * saved["batch_size"] * saved["num_replicas"]
            batches = samples // (self.batch_size * self.sampler.num_replicas)
            rank_zero_warn(
                f"Resuming the training data with {current} although the checkpoint was written with {saved}:"
                f" the exact batch order cannot be restored; continuing after ~{samples} samples of epoch"
                f" {state_dict['epoch']}. Resume with the same settings for an exact resume."
            )
        self._resume_state = {"epoch": state_dict["epoch"], "batches_consumed": batches}
