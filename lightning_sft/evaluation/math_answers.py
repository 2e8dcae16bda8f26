"""MATH answers as lm-evaluation-harness reads and compares them: a port of
`lm_eval/tasks/hendrycks_math/utils.py` at v0.4.12 (EleutherAI/lm-evaluation-harness @ 4e7e0d47), which takes its
normalisation from the MATH paper's repository (hendrycks/math). Pure string work.

The reference answer is the last `\\boxed{...}` of the worked solution (`reference_answer`); the model's answer is
the text between its first and last `$`, or all of it (`generated_answer`); the two are equal when their
`normalized` forms are (`equivalent`). Where lm-eval's `strip_string` raises (an assert, an index or `int()`
failing) its `is_equiv` compares the raw strings; `normalized` returns None there and `equivalent` does the same.
"""

BOXED = "\\boxed"


def _last_boxed(text: str) -> str | None:
    """lm-eval's `last_boxed_only_string`: the last `\\boxed{...}` (or `\\fbox{...}`) with its braces balanced,
    or, when `text` has a `\\boxed ` (with a space), `\\boxed ` + what follows its last one up to a `$`; None if
    there is none or its braces never close."""
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    start = text.rfind(BOXED)
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    depth = 0
    for index in range(start, len(text)):
        if text[index] == "{":
            depth += 1
        if text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[start:index + 1]
    return None


def reference_answer(solution: str) -> str:
    """lm-eval's `remove_boxed(last_boxed_only_string(solution))`: the content of the solution's last
    `\\boxed{...}` (or what follows `\\boxed `). A ValueError where lm-eval's asserts fail (no `\\boxed`, an
    `\\fbox`, unclosed braces)."""
    boxed = _last_boxed(solution)
    if boxed is not None and boxed.startswith("\\boxed "):
        return boxed[len("\\boxed "):]
    if boxed is None or not boxed.startswith(BOXED + "{"):
        raise ValueError(f"the solution has no closed \\boxed{{...}} answer (it ends {solution[-80:]!r}); MATH"
                         " solutions give their final answer as \\boxed{ANSWER}")
    return boxed[len(BOXED) + 1:-1]


def generated_answer(text: str) -> str:
    """lm-eval's `process_results` extraction: the text between the first and last `$` when it has two or more,
    else all of it."""
    first, last = text.find("$"), text.rfind("$")
    return text[first + 1:last] if first != last else text


def _units_removed(text: str) -> str | None:
    """`remove_right_units`: what precedes a `\\text{ ` (with a space; lm-eval asserts there is one at most)."""
    parts = text.split("\\text{ ")
    if len(parts) > 2:
        return None
    return parts[0]


def _sqrt_fixed(text: str) -> str | None:
    """`fix_sqrt`: `\\sqrt3` -> `\\sqrt{3}` (the one character after `\\sqrt`, whatever it is)."""
    parts = text.split("\\sqrt")
    fixed = parts[0]
    for part in parts[1:]:
        if not part:
            return None
        fixed += "\\sqrt" + (part if part[0] == "{" else "{" + part[0] + "}" + part[1:])
    return fixed


def _fracs_fixed(text: str) -> str | None:
    """`fix_fracs`: `\\frac12` -> `\\frac{1}{2}`, `\\frac1{72}` -> `\\frac{1}{72}`; the text unchanged when a
    `\\frac` is followed by one character only."""
    parts = text.split("\\frac")
    fixed = parts[0]
    for part in parts[1:]:
        fixed += "\\frac"
        if not part:
            return None
        if part[0] == "{":
            fixed += part
        elif len(part) < 2:
            return text
        elif part[1] != "{":
            fixed += "{" + part[0] + "}{" + part[1] + "}" + part[2:]
        else:
            fixed += "{" + part[0] + "}" + part[1:]
    return fixed


def _slash_fixed(text: str) -> str | None:
    """`fix_a_slash_b`: `3/4` -> `\\frac{3}{4}` for integers written plainly; lm-eval's `int()` raises on
    anything else around a single `/`."""
    parts = text.split("/")
    if len(parts) != 2:
        return text
    try:
        numerator, denominator = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    if text != f"{numerator}/{denominator}":
        return text
    return f"\\frac{{{numerator}}}{{{denominator}}}"


def normalized(text: str) -> str | None:
    """lm-eval's `strip_string`, step by step in its order; None where it raises.

    Removes line breaks, `\\!`, `\\left`, `\\right`, degrees (`^{\\circ}`, `^\\circ`), `\\$`, `\\%`, units after
    `\\text{ `, spaces and a short `x =` prefix (2 characters or fewer before a single `=`); `\\\\` -> `\\`,
    `tfrac`/`dfrac` -> `frac`; `.5` -> `0.5`; `\\sqrt3` -> `\\sqrt{3}`; `\\frac12` -> `\\frac{1}{2}`;
    exactly `0.5` -> `\\frac{1}{2}`; `a/b` of integers -> `\\frac{a}{b}`.
    """
    text = text.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    text = text.replace("tfrac", "frac").replace("dfrac", "frac")
    text = text.replace("\\left", "").replace("\\right", "")
    text = text.replace("^{\\circ}", "").replace("^\\circ", "")
    text = text.replace("\\$", "")
    text = _units_removed(text)
    if text is None:
        return None
    text = text.replace("\\%", "").replace("\\%", "")  # twice, as lm-eval does: the first can leave a new one
    text = text.replace(" .", " 0.").replace("{.", "{0.")
    if not text:
        return text
    if text[0] == ".":
        text = "0" + text
    sides = text.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        text = sides[1]
    text = _sqrt_fixed(text)
    if text is None:
        return None
    text = _fracs_fixed(text.replace(" ", ""))
    if text is None:
        return None
    if text == "0.5":
        text = "\\frac{1}{2}"
    return _slash_fixed(text)


def equivalent(answer: str, reference: str) -> bool:
    """lm-eval's `is_equiv`: the `normalized` strings are equal; where either cannot be normalised, the raw
    strings are."""
    first, second = normalized(answer), normalized(reference)
    if first is None or second is None:
        return answer == reference
    return first == second
