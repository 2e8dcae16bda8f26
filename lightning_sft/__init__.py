"""lightning-sft: full-parameter SFT of Hugging Face causal LMs with head-activation monitoring.

`SFTModule` and `SFTDataModule` are imported lazily, so `lightning_sft.stats` stays a numpy/scipy-only import.
Importing the package first checks the installed versions of its dependencies against the ranges it declares
(`lightning_sft.versions`): one outside them raises `UnsupportedVersion` (an ImportError) in one line.
"""

from typing import Any

from lightning_sft.versions import require_supported_versions

require_supported_versions()

__all__ = ["SFTDataModule", "SFTModule"]


def __getattr__(name: str) -> Any:
    if name == "SFTModule":
        from lightning_sft.module import SFTModule

        return SFTModule
    if name == "SFTDataModule":
        from lightning_sft.data import SFTDataModule

        return SFTDataModule
    raise AttributeError(f"module 'lightning_sft' has no attribute {name!r}")
