"""Lightning callbacks for lightning-sft; add them to any Trainer."""

from callbacks.head_activation import HeadActivationCallback
from callbacks.task_accuracy import TaskAccuracyCallback

__all__ = ["HeadActivationCallback", "TaskAccuracyCallback"]
