"""The masked CRC-32C of TensorBoard's event records, vectorised with numpy.

Without TensorFlow, TensorBoard's record writer (`tensorboard.summary.writer.record_writer`, behind
torch's `SummaryWriter` and Lightning's `TensorBoardLogger`) checksums every record with
`tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c`, a Python loop over the bytes: about
0.13 ms per KB, a quarter of the time HeadActivationCallback spends logging its images at the end of a run.
`use_for_event_files` swaps in `masked_crc32c` below, which returns the same values, so event files are
byte for byte the same.

How: CRC-32C is linear over GF(2). The data is cut into `BLOCK`-byte blocks (zeros in front, which leave
a CRC started from 0 unchanged); each block's CRC from 0 is the XOR of a per-position table `_POSITION`
gathered at its bytes, all blocks at once; the blocks are chained in Python, a block's starting register
acting as four bytes XORed into its head.
"""

import functools

import numpy as np
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
from tensorboard.summary.writer import record_writer

BLOCK = 512  # bytes per block: a [BLOCK, 256] uint32 table (512 KiB); records are mostly a few KB or less
POLYNOMIAL = 0x82F63B78  # CRC-32C (Castagnoli), bit-reflected
MASK_DELTA = 0xA282EAD8  # TFRecord's checksum mask
SHORT = 200  # bytes under which tensorboard's own loop is faster (numpy's fixed cost: ~25 us); >= 4, as the
# initial register is XORed into the first four bytes


@functools.cache
def _position_table() -> np.ndarray:
    """[BLOCK, 256] uint32: row d, column b = the CRC from 0 (no final XOR) of byte b followed by d zero bytes,
    reversed in d so that row j belongs to the j-th byte of a block."""
    crc = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        crc = np.where(crc & 1, (crc >> 1) ^ np.uint32(POLYNOMIAL), crc >> 1).astype(np.uint32)
    table = np.empty((BLOCK, 256), np.uint32)
    table[0] = crc
    for distance in range(1, BLOCK):
        previous = table[distance - 1]
        table[distance] = crc[previous & 0xFF] ^ (previous >> 8)
    return table[::-1].copy()


def crc32c(data: bytes) -> int:
    """CRC-32C of `data` (initial register and final XOR 0xFFFFFFFF), as `pywrap_tensorflow.crc32c`."""
    if len(data) < SHORT:
        return pywrap_tensorflow.crc32c(data)
    table = _position_table()
    padded = np.zeros(-(-len(data) // BLOCK) * BLOCK, np.uint8)
    padded[len(padded) - len(data):] = np.frombuffer(data, np.uint8)
    padded[len(padded) - len(data):][:4] ^= 0xFF  # the initial register 0xFFFFFFFF
    blocks = padded.reshape(-1, BLOCK)
    crcs = np.bitwise_xor.reduce(table[np.arange(BLOCK), blocks], axis=1).tolist()  # each block's, from 0
    head = table[:4].tolist()  # the CRC contribution of a block's first four bytes
    register = 0
    for block_crc in crcs:
        register = (block_crc ^ head[0][register & 0xFF] ^ head[1][(register >> 8) & 0xFF]
                    ^ head[2][(register >> 16) & 0xFF] ^ head[3][register >> 24])
    return register ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C of `data`, as `pywrap_tensorflow.masked_crc32c`."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + MASK_DELTA) & 0xFFFFFFFF


def use_for_event_files() -> None:
    """Make TensorBoard's record writer checksum with `masked_crc32c` (same values, faster) in this process."""
    record_writer.masked_crc32c = masked_crc32c
