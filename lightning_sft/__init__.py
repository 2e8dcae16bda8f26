"""lightning-sft: full-parameter SFT of Hugging Face causal LMs with head-activation monitoring."""
