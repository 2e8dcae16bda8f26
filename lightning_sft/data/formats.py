"""Formats: one row (a dict) -> (input_ids, labels), two equal-length `list[int]`, labels `IGNORE_INDEX` where
unsupervised. A text field must hold a string: a JSON number there (`16`, `1.50`) is refused, since its text as
written (`1.50`, `1e3`) is not what JSON parsing keeps (`1.5`, `1000.0`); quote it in the file.

Each format also tells whether a row's response is empty (only the end-of-sequence token would be learned),
so `tokenize_rows` can count such rows.
"""

from transformers import PreTrainedTokenizerBase

from lightning_sft.data.adapters import ADAPTERS
from lightning_sft.labels import IGNORE_INDEX

# Used when the tokenizer has no chat template of its own. Each turn is `<|role|>\n{content}{eos}\n`, so the
# end-of-turn token is the tokenizer's eos; the assistant's content + eos are supervised.
FALLBACK_CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token if eos_token else '' }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _missing_fields_error(missing: str, row: dict) -> ValueError:
    present = sorted(key for key, value in row.items() if value is not None)
    return ValueError(
        f"missing {missing}; the row has {present}. Accepted formats: 'chat' (field 'messages': a list"
        " of {role, content}), 'prompt_response' (fields 'prompt' and 'response'), 'text' (field 'text')."
        " Name other fields with PromptResponse(prompt_field=..., response_field=...) (in YAML: format:"
        " {class_path: lightning_sft.data.PromptResponse, init_args: {prompt_field: question, response_field:"
        f" answer}}}}), ChatMessages(messages_field=...) or PlainText(text_field=...), or convert benchmark rows"
        f" with an adapter ({', '.join(ADAPTERS)})"
    )


def _require(row: dict, fields: tuple[str, ...]) -> None:
    if missing := [name for name in fields if row.get(name) is None]:
        raise _missing_fields_error(f"field(s) {missing}", row)


def _text(row: dict, field: str) -> str:
    """`row[field]`, which must be a string (a number is refused: see the module docstring)."""
    value = row[field]
    if isinstance(value, str):
        return value
    raise ValueError(
        f"field {field!r} holds a {type(value).__name__} ({value!r:.60}), not text; write it as a JSON string"
        " (in quotes), exactly as it should be read"
    )


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _bos_eos(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    return ([] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id],
            [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id])


class PromptResponse:
    """bos (if the tokenizer has one) + prompt (unsupervised) + response + eos (if any; supervised)."""

    def __init__(self, prompt_field: str = "prompt", response_field: str = "response") -> None:
        self.prompt_field = prompt_field
        self.response_field = response_field

    def __call__(self, row: dict, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
        _require(row, (self.prompt_field, self.response_field))
        bos, eos = _bos_eos(tokenizer)
        prompt = bos + _encode(tokenizer, _text(row, self.prompt_field))
        response = _encode(tokenizer, _text(row, self.response_field)) + eos
        return prompt + response, [IGNORE_INDEX] * len(prompt) + response

    def empty_response(self, row: dict) -> bool:
        """Whether the response is empty or whitespace (call after `__call__` accepted the row)."""
        return not _text(row, self.response_field).strip()


class ChatMessages:
    """A conversation (list of {role, content}) through the tokenizer's chat template, or
    `FALLBACK_CHAT_TEMPLATE` when it has none. Supervised: each assistant turn's content and its
    end-of-turn token(s).

    Assistant spans are found by rendering prefixes: turn i spans from the end of the render of
    messages[:i] with the generation prompt to the end of the render of messages[:i+1] (trailing whitespace
    after the end-of-turn token excluded). Tokens overlapping a span (by the fast tokenizer's character
    offsets) are supervised. This works for any template that renders a prefix of the conversation as a
    prefix of the text, which is checked.
    """

    def __init__(self, messages_field: str = "messages") -> None:
        self.messages_field = messages_field

    def __call__(self, row: dict, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
        _require(row, (self.messages_field,))
        messages = row[self.messages_field]
        if not isinstance(messages, list) or not messages or not all(
            isinstance(message, dict) and "role" in message and "content" in message for message in messages
        ):
            raise ValueError(f"field {self.messages_field!r} must be a non-empty list of {{role, content}} dicts")
        if messages[0]["role"] == "assistant":
            raise ValueError("the conversation starts with an assistant message; start it with a user (or system) turn")
        messages = [{**message, "content": _text(message, "content")} for message in messages]
        template = None if tokenizer.chat_template else FALLBACK_CHAT_TEMPLATE  # None: the tokenizer's own

        def render(turns: list[dict], generation_prompt: bool = False) -> str:
            return tokenizer.apply_chat_template(
                turns, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
            )

        text = render(messages)
        spans = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before, through = render(messages[:index], generation_prompt=True), render(messages[: index + 1])
            if not (through.startswith(before) and text.startswith(through)):
                raise ValueError(
                    f"the chat template renders the first {index + 1} messages as something that is not a prefix"
                    " of the whole conversation, so assistant tokens cannot be located; use a template without"
                    " turn-dependent rendering"
                )
            spans.append((len(before), len(through.rstrip())))
        if not tokenizer.is_fast:
            raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; chat data needs character offsets")
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        input_ids = encoding["input_ids"]
        labels = [
            token if any(start < span_end and end > span_start for span_start, span_end in spans) else IGNORE_INDEX
            for token, (start, end) in zip(input_ids, encoding["offset_mapping"])
        ]
        return input_ids, labels

    def empty_response(self, row: dict) -> bool:
        """Whether every assistant turn is empty or whitespace (or there is none)."""
        return not any(_text(message, "content").strip()
                       for message in row[self.messages_field] if message["role"] == "assistant")


class PlainText:
    """bos (if any) + text + eos (if any); every token supervised."""

    def __init__(self, text_field: str = "text") -> None:
        self.text_field = text_field

    def __call__(self, row: dict, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
        _require(row, (self.text_field,))
        bos, eos = _bos_eos(tokenizer)
        input_ids = bos + _encode(tokenizer, _text(row, self.text_field)) + eos
        return input_ids, list(input_ids)

    def empty_response(self, row: dict) -> bool:
        """Whether the text is empty or whitespace."""
        return not _text(row, self.text_field).strip()


Format = PromptResponse | ChatMessages | PlainText
FORMATS: dict[str, type[Format]] = {"prompt_response": PromptResponse, "chat": ChatMessages, "text": PlainText}


def check_format(format: str | Format) -> None:
    """Raise for a format name that is neither 'auto' nor in `FORMATS`."""
    if isinstance(format, str) and format != "auto" and format not in FORMATS:
        raise ValueError(f"format={format!r}; pass 'auto', one of {list(FORMATS)} or a format object")


def resolve_format(format: str | Format, row: dict) -> Format:
    """The format object for `format`; for "auto", chosen by the fields of `row`."""
    if not isinstance(format, str):
        return format
    check_format(format)
    if format in FORMATS:
        return FORMATS[format]()
    present = {key for key, value in row.items() if value is not None}
    if "messages" in present:
        return ChatMessages()
    if {"prompt", "response"} <= present:
        return PromptResponse()
    if "text" in present:
        return PlainText()
    raise _missing_fields_error("the fields of every format ('messages', or 'prompt' + 'response', or 'text')", row)
