"""Which failures of a command are the user's input (one message, no traceback) and which are bugs.

A user error is a `ValueError`, `OSError` or `FloatingPointError` (a diverged model) that this project's code
raises on purpose (a `raise` statement in `lightning_sft/`, `callbacks/` or `train.py`): by convention its message names the bad value, where it came
from, and the fix. Such an error may arrive wrapped by jsonargparse (a callback's constructor failing inside
its "Union subtypes" error, with ours as `__cause__`). Anything else, a ValueError from inside torch included,
is a bug and keeps its traceback.
"""

import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUR_CODE = (ROOT / "lightning_sft", ROOT / "callbacks", ROOT / "train.py")
USER_ERRORS = (ValueError, OSError, FloatingPointError)


def user_error_message(error: BaseException) -> str | None:
    """The message to print for `error` if the user's input caused it, else None (a bug: show the traceback).

    The message is prefixed with the class whose method raised it (e.g. `HeadActivationCallback: ...`)
    where the message does not already start with that name.
    """
    while isinstance(error, USER_ERRORS):
        if _raised_on_purpose_here(error):
            frame = _innermost(error).tb_frame
            owner = frame.f_locals.get("self", frame.f_locals.get("cls"))
            name = owner.__name__ if isinstance(owner, type) else type(owner).__name__ if owner else None
            message = str(error)
            return message if name is None or message.startswith(name) else f"{name}: {message}"
        error = error.__cause__
    return None


def _innermost(error: BaseException):
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb


def _raised_on_purpose_here(error: BaseException) -> bool:
    if error.__traceback__ is None:
        return False
    frame = traceback.extract_tb(error.__traceback__)[-1]
    path = Path(frame.filename).resolve()
    ours = any(path == place or place in path.parents for place in OUR_CODE)
    return ours and (frame.line or "").startswith("raise")
