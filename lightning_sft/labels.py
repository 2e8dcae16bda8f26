"""The label convention every module shares: `labels[t]` is the token predicted from position t-1 (HF's shift
inside the loss), and positions that are not supervised hold `IGNORE_INDEX`."""

IGNORE_INDEX = -100  # torch.nn.functional.cross_entropy's default ignore_index, as transformers uses it
