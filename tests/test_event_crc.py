"""lightning_sft.event_crc: the same checksums as TensorBoard's own, and event files TensorBoard reads back."""

import os

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
from tensorboard.summary.writer import record_writer
from torch.utils.tensorboard import SummaryWriter

from lightning_sft import event_crc


@pytest.mark.parametrize("length", [0, 3, 4, 5, event_crc.SHORT - 1, event_crc.SHORT, event_crc.BLOCK - 1,
                                    event_crc.BLOCK, event_crc.BLOCK + 1, 3 * event_crc.BLOCK + 7, 20_000])
def test_checksums_equal_tensorboards_own(length):
    for data in (os.urandom(length), bytes(length), b"\xff" * length):
        assert event_crc.crc32c(data) == pywrap_tensorflow.crc32c(data)
        assert event_crc.masked_crc32c(data) == pywrap_tensorflow.masked_crc32c(data)


def test_crc32c_of_the_standard_check_string():
    # RFC 3720 (iSCSI) B.4: 32 bytes of zeros -> 0x8A9136AA, of 0xFF -> 0x62A8AB43; "123456789" -> 0xE3069283
    assert event_crc.crc32c(bytes(32)) == 0x8A9136AA
    assert event_crc.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert event_crc.crc32c(b"123456789") == 0xE3069283


def test_event_files_written_with_it_pass_tensorboards_checks(tmp_path, monkeypatch):
    monkeypatch.setattr(record_writer, "masked_crc32c", record_writer.masked_crc32c)  # undone after the test
    event_crc.use_for_event_files()
    assert record_writer.masked_crc32c is event_crc.masked_crc32c
    pixels = np.random.default_rng(0).integers(0, 256, (3, 60, 80), dtype=np.uint8)  # a record of ~14 KB
    with SummaryWriter(str(tmp_path)) as writer:
        for step in range(3):
            writer.add_scalar("loss", 1.0 / (step + 1), step)
            writer.add_image("noise", pixels, step)
    # the reader checksums each record with tensorboard's own function and stops at a mismatch
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert [event.step for event in events.Scalars("loss")] == [0, 1, 2]
    assert [event.step for event in events.Images("noise")] == [0, 1, 2]
