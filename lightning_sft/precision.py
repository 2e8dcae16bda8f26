"""Whether bf16 is fast on this CPU, and the one warning a run gets when it asks for bf16 where it is not.

torch runs bf16 matmuls on the CPU through oneDNN where `torch.ops.mkldnn._is_mkldnn_bf16_supported()` (the
check ATen itself uses, honouring `ATEN_CPU_CAPABILITY`) holds, and at full speed only where the CPU has
native bf16 arithmetic (`torch.cpu.get_capabilities()`: AVX512-BF16 or AMX-BF16 on x86, BF16/SVE-BF16 on
ARM). Measured with torch 2.13 on a 1024x128 @ 128x384 matmul against float32 on one AVX512-BF16 core:
0.4x the time natively, 2.2x with oneDNN limited to AVX512 without bf16 (`ONEDNN_MAX_CPU_ISA=AVX512_CORE`),
25x with AVX2 only (`ATEN_CPU_CAPABILITY=avx2`); issue 12 measured 32x on an AVX2 machine.
"""

import functools

import torch
from lightning.pytorch.utilities import rank_zero_warn

BF16_PRECISIONS = ("bf16-true", "bf16-mixed")  # Lightning's names, as `Trainer.precision` reports them
# torch.cpu.get_capabilities() keys for native bf16 arithmetic: x86 (AVX512-BF16, AMX) and ARM64
NATIVE_BF16_CAPABILITIES = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


def cpu_bf16_cost() -> str | None:
    """What a bf16 matmul costs on this CPU against float32, in words; None where bf16 is native."""
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return (f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no bf16 support in oneDNN, so torch "
                "emulates bf16 matmuls, about 30x slower than float32")
    if not hasattr(torch.cpu, "get_capabilities"):  # torch 2.6 (the lowest declared) has none
        return (f"torch {torch.__version__} cannot tell whether this CPU has native bf16 arithmetic"
                " (no torch.cpu.get_capabilities); without it bf16 matmuls are about 2x slower than float32")
    capabilities = torch.cpu.get_capabilities()
    if not any(capabilities.get(name, False) for name in NATIVE_BF16_CAPABILITIES):
        return ("this CPU has no native bf16 arithmetic (no AVX512-BF16/AMX), so oneDNN converts bf16 to float32 "
                "for every matmul, about 2x slower than float32")
    return None


@functools.cache  # once per process and setting: fit, then validate, must not repeat it
def warn_if_cpu_bf16_is_slow(precision: str, dtype: str) -> None:
    """Warns (rank 0) when a CPU run computes in bf16 (`trainer.precision` bf16-*, or weights loaded as
    `model.dtype: bfloat16` under a 32-bit precision, which leaves them bf16) where this CPU emulates it."""
    in_bf16 = precision in BF16_PRECISIONS or (dtype == "bfloat16" and precision.startswith(("32", "64")))
    cost = cpu_bf16_cost() if in_bf16 else None
    if cost is not None:
        rank_zero_warn(f"trainer.precision={precision}, model.dtype={dtype} on CPU compute in bf16, but {cost}. "
                       "Use `trainer.precision: 32-true` with `model.dtype: float32` to train at float32 speed.")
