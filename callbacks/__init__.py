"""Lightning callbacks for lightning-sft; add them to any Trainer."""

from callbacks.head_activation import HeadActivationCallback

__all__ = ["HeadActivationCallback"]
