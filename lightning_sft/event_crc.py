"""TensorBoard's event-record checksum (TFRecord's masked CRC-32C) from google-crc32c's C implementation.

Without TensorFlow, TensorBoard's record writer (`tensorboard.summary.writer.record_writer`, behind torch's
`SummaryWriter` and Lightning's `TensorBoardLogger`) checksums every record with
`tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c`, a Python loop over the bytes: about
0.13 ms per KB, a quarter of the time HeadActivationCallback spends logging its images at the end of a run.
`use_for_event_files` swaps in `masked_crc32c` below, the same values from C (as tensorboardX does with a C
CRC-32C where one is installed), so event files are byte for byte the same.
"""

import google_crc32c
from tensorboard.summary.writer import record_writer

MASK_DELTA = 0xA282EAD8  # TFRecord's checksum mask


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C of `data`, as `pywrap_tensorflow.masked_crc32c`."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + MASK_DELTA) & 0xFFFFFFFF


def use_for_event_files() -> None:
    """Make TensorBoard's record writer checksum with `masked_crc32c` in this process, where google-crc32c has
    its C implementation (its pure-Python fallback would be no faster than TensorBoard's own)."""
    if google_crc32c.implementation == "c":
        record_writer.masked_crc32c = masked_crc32c
