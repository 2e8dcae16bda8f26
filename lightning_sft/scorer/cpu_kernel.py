"""The CPU kernel behind `head_scored_attention` (`csrc/scored_attention.cpp`), compiled on first use.

`torch.utils.cpp_extension` builds it once per CPU capability (about 10 s with g++) into torch's extension
cache (`TORCH_EXTENSIONS_DIR`, default `~/.cache/torch_extensions`), where later processes find it. It is
vectorised for the capability torch itself dispatches to (`torch.backends.cpu.get_cpu_capability()`) and
calls the BLAS that torch links (`sgemm_`). Where it cannot be built or loaded (no C++ compiler, a torch
without `sgemm_`), scoring warns once and uses its Python path, which gives the same scores more slowly.
"""

import functools
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "scored_attention.cpp"
# Compiler flags for the instruction sets of each capability, as torch builds its own CPU kernels.
CAPABILITY_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
}


@functools.cache
def scored_attention_backward():
    """`torch.ops.lightning_sft.scored_attention_backward` (built and loaded on the first call), or None
    with a warning where that fails."""
    from torch.utils.cpp_extension import load

    capability = torch.backends.cpu.get_cpu_capability()
    flags = CAPABILITY_FLAGS.get(capability)
    # at::vec picks its Vectorized<float> by these macros; without them it is plain C++ (still correct).
    defines = [f"-DCPU_CAPABILITY={capability}", f"-DCPU_CAPABILITY_{capability}"] if flags else [
        "-DCPU_CAPABILITY=DEFAULT"]
    try:
        load(name=f"lightning_sft_scored_attention_{capability.lower()}", sources=[str(SOURCE)],
             extra_cflags=["-O3", "-fopenmp", *defines, *(flags or [])], extra_ldflags=["-fopenmp"],
             is_python_module=False)
    except Exception as error:  # noqa: BLE001 (compiler, linker and loader failures have no common type)
        warnings.warn(f"lightning_sft: could not build the CPU head-scoring kernel {SOURCE.name} ({error});"
                      " scoring uses its slower Python path. Install g++ (and ninja) to get the kernel.",
                      RuntimeWarning, stacklevel=2)
        return None
    return torch.ops.lightning_sft.scored_attention_backward
