"""lightning_sft.event_crc: the same checksums as TensorBoard's own, and event files TensorBoard reads back."""

import os

import google_crc32c
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
from tensorboard.summary.writer import record_writer
from torch.utils.tensorboard import SummaryWriter

from lightning_sft import event_crc


@pytest.mark.parametrize("length", [0, 1, 4, 5, 8, 200, 4096, 20_000])
def test_checksums_equal_tensorboards_own(length):
    for data in (os.urandom(length), bytes(length), b"\xff" * length):
        assert event_crc.masked_crc32c(data) == pywrap_tensorflow.masked_crc32c(data)


def test_installed_only_with_the_c_implementation(monkeypatch):
    own = record_writer.masked_crc32c
    monkeypatch.setattr(record_writer, "masked_crc32c", own)  # undone after the test
    monkeypatch.setattr(google_crc32c, "implementation", "python")
    event_crc.use_for_event_files()
    assert record_writer.masked_crc32c is own
    monkeypatch.setattr(google_crc32c, "implementation", "c")
    event_crc.use_for_event_files()
    assert record_writer.masked_crc32c is event_crc.masked_crc32c


def test_event_files_written_with_it_pass_tensorboards_checks(tmp_path, monkeypatch):
    monkeypatch.setattr(record_writer, "masked_crc32c", record_writer.masked_crc32c)  # undone after the test
    event_crc.use_for_event_files()
    assert record_writer.masked_crc32c is event_crc.masked_crc32c  # this machine has the C implementation
    pixels = np.random.default_rng(0).integers(0, 256, (3, 60, 80), dtype=np.uint8)  # a record of ~14 KB
    with SummaryWriter(str(tmp_path)) as writer:
        for step in range(3):
            writer.add_scalar("loss", 1.0 / (step + 1), step)
            writer.add_image("noise", pixels, step)
    # the reader checksums each record with tensorboard's own function and stops at a mismatch
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert [event.step for event in events.Scalars("loss")] == [0, 1, 2]
    assert [event.step for event in events.Images("noise")] == [0, 1, 2]
