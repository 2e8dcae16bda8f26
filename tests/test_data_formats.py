"""Formats and tokenization: labels token by token, adapters, truncation, and row errors naming their place."""

import json

import pytest

from lightning_sft.data import (
    FALLBACK_CHAT_TEMPLATE,
    ChatMessages,
    PlainText,
    PromptResponse,
    SFTDataModule,
    load_examples,
    pack_examples,
    tokenize_rows,
)
from lightning_sft.labels import IGNORE_INDEX
from lightning_sft.tokenizer import byte_tokenizer
from tests.data_helpers import BOS, CHATML, DATA, EOS, expected, ids, write_jsonl


def test_prompt_response_labels_token_by_token(tokenizer):
    [example] = tokenize_rows([{"prompt": "2+2=", "response": "4."}], tokenizer)
    assert (example["input_ids"], example["labels"]) == expected(
        [([BOS] + ids(tokenizer, "2+2="), False), (ids(tokenizer, "4.") + [EOS], True)]
    )


def test_prompt_response_with_renamed_fields(tokenizer):
    row = {"question": "Why?", "answer": "Because.", "prompt": "ignored"}
    [example] = tokenize_rows([row], tokenizer, format=PromptResponse(prompt_field="question", response_field="answer"))
    assert (example["input_ids"], example["labels"]) == expected(
        [([BOS] + ids(tokenizer, "Why?"), False), (ids(tokenizer, "Because.") + [EOS], True)]
    )


def test_plain_text_supervises_every_token(tokenizer):
    [example] = tokenize_rows([{"text": "héllo"}], tokenizer, format="text")
    assert (example["input_ids"], example["labels"]) == expected([([BOS] + ids(tokenizer, "héllo") + [EOS], True)])
    assert example["labels"][0] == IGNORE_INDEX


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "yo"},
    {"role": "user", "content": "q?"},
    {"role": "assistant", "content": "ok"},
]


def test_chat_with_fallback_template_supervises_assistant_content_and_eos(tokenizer):
    assert tokenizer.chat_template is None
    [example] = tokenize_rows([{"messages": CONVERSATION}], tokenizer)
    assert (example["input_ids"], example["labels"]) == expected([
        ([BOS] + ids(tokenizer, "<|system|>\nBe brief.") + [EOS] + ids(tokenizer, "\n<|user|>\nhi") + [EOS]
         + ids(tokenizer, "\n<|assistant|>\n"), False),
        (ids(tokenizer, "yo") + [EOS], True),
        (ids(tokenizer, "\n<|user|>\nq?") + [EOS] + ids(tokenizer, "\n<|assistant|>\n"), False),
        (ids(tokenizer, "ok") + [EOS], True),
        (ids(tokenizer, "\n"), False),
    ])
    rendered = tokenizer.apply_chat_template(CONVERSATION, chat_template=FALLBACK_CHAT_TEMPLATE, tokenize=False)
    assert tokenizer.decode(example["input_ids"]) == rendered


def test_chat_with_the_tokenizers_own_template():
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = CHATML
    [example] = tokenize_rows([{"messages": CONVERSATION}], tokenizer, format="chat")
    assert (example["input_ids"], example["labels"]) == expected([
        (ids(tokenizer, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                        "<|im_start|>assistant\n"), False),
        (ids(tokenizer, "yo<|im_end|>"), True),
        (ids(tokenizer, "\n<|im_start|>user\nq?<|im_end|>\n<|im_start|>assistant\n"), False),
        (ids(tokenizer, "ok<|im_end|>"), True),
        (ids(tokenizer, "\n"), False),
    ])


def test_chat_template_that_is_not_prefix_stable_is_refused():
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% if loop.last %}END{% endif %}{% endfor %}"
    with pytest.raises(ValueError, match="<rows> row 1: the chat template renders the first 3 messages"):
        tokenize_rows([{"messages": CONVERSATION}], tokenizer)


def test_chat_rejects_bad_conversations(tokenizer):
    with pytest.raises(ValueError, match="starts with an assistant message"):
        tokenize_rows([{"messages": CONVERSATION[2:]}], tokenizer)
    with pytest.raises(ValueError, match="must be a non-empty list of"):
        tokenize_rows([{"messages": [{"content": "no role"}]}], tokenizer)


def test_auto_format_picks_by_columns(tokenizer):
    chat = tokenize_rows([{"messages": CONVERSATION[1:3], "text": "x"}], tokenizer)[0]
    assert chat["input_ids"] == ChatMessages()({"messages": CONVERSATION[1:3]}, tokenizer)[0]
    pair = tokenize_rows([{"prompt": "a", "response": "b", "text": "x"}], tokenizer)[0]
    assert pair["input_ids"] == PromptResponse()({"prompt": "a", "response": "b"}, tokenizer)[0]
    text = tokenize_rows([{"text": "x", "prompt": "only a prompt"}], tokenizer)[0]
    assert text["input_ids"] == PlainText()({"text": "x"}, tokenizer)[0]


def test_auto_format_with_no_matching_fields_explains_the_formats(tokenizer):
    with pytest.raises(ValueError) as error:
        tokenize_rows([{"question": "q", "answer": "a"}], tokenizer, source="mine.jsonl")
    message = str(error.value)
    for part in ("mine.jsonl row 1", "'messages'", "'prompt' + 'response'", "'text'", "['answer', 'question']",
                 "PromptResponse(prompt_field=..., response_field=...)", "adapter (gsm8k"):
        assert part in message


def test_explicit_format_names_the_missing_field(tokenizer):
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "c"}]
    with pytest.raises(ValueError, match=r"x.jsonl row 2: missing field\(s\) \['response'\]; the row has \['prompt'\]"):
        tokenize_rows(rows, tokenizer, format="prompt_response", source="x.jsonl")


def test_unknown_format_and_adapter_names(tokenizer):
    with pytest.raises(ValueError, match="format='xml'; pass 'auto', one of"):
        tokenize_rows([{"text": "a"}], tokenizer, format="xml")
    with pytest.raises(ValueError, match="adapter='gsm9k'; pass one of"):
        tokenize_rows([{"text": "a"}], tokenizer, adapter="gsm9k")


def test_adapter_callable_runs_before_the_format(tokenizer):
    [example] = tokenize_rows([{"q": "a"}], tokenizer, adapter=lambda row: {"prompt": row["q"], "response": "b"})
    assert example["input_ids"] == [BOS] + ids(tokenizer, "ab") + [EOS]


# -------------------------------------------------------------------------------------------- truncation


def test_truncation_keeps_the_start_and_skips_examples_without_targets(tokenizer):
    rows = [
        {"prompt": "aaaa", "response": "bb"},  # 8 tokens -> 6: bos aaaa b
        {"prompt": "a" * 10, "response": "b"},  # prompt fills max_length: skipped
        {"prompt": "", "response": "c"},
        {"prompt": "a" * 5, "response": "b"},  # bos + 5 prompt tokens = 6: skipped
        {"prompt": "a", "response": "b"},
    ]
    with pytest.warns(UserWarning, match=r"^mine.jsonl: skipped 2 of 5 examples .* max_length=6") as record:
        examples = tokenize_rows(rows, tokenizer, max_length=6, source="mine.jsonl")
    assert len(record) == 1
    assert len(examples) == 3
    assert examples[0]["input_ids"] == [BOS] + ids(tokenizer, "aaaab")
    assert examples[0]["labels"] == [IGNORE_INDEX] * 5 + ids(tokenizer, "b")
    assert examples[1]["labels"] == [IGNORE_INDEX] + ids(tokenizer, "c") + [EOS]


def test_no_example_left_names_the_source_and_suggests_max_length(tokenizer):
    with pytest.raises(ValueError, match="mine.jsonl: none of its 2 examples .* use a larger max_length"):
        tokenize_rows([{"prompt": "long prompt", "response": "b"}] * 2, tokenizer, max_length=4, source="mine.jsonl")


@pytest.mark.parametrize("max_length", [1, 0, -3, 2.5, True])
def test_max_length_below_two_is_refused_everywhere(tmp_path, tokenizer, max_length):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"text": "abc"}])
    for call in (
        lambda: tokenize_rows([{"text": "abc"}], tokenizer, max_length=max_length),
        lambda: load_examples(path, tokenizer, max_length=max_length),
        lambda: pack_examples([], max_length=max_length),
        lambda: SFTDataModule(str(path), max_length=max_length),
    ):
        with pytest.raises(ValueError, match="max_length=.*; pass an integer >= 2"):
            call()
    assert tokenize_rows([{"text": "abc"}], tokenizer, max_length=2)[0]["input_ids"] == [BOS] + ids(tokenizer, "a")


def test_load_examples_reads_adapts_and_limits(tokenizer):
    examples = load_examples(DATA / "gsm8k.jsonl", tokenizer, adapter="gsm8k", max_length=4096, max_examples=7)
    assert len(examples) == 7
    first = json.loads((DATA / "gsm8k.jsonl").read_text().splitlines()[0])
    assert examples[0]["input_ids"] == [BOS] + ids(tokenizer, first["question"] + "\n" + first["answer"]) + [EOS]
    with pytest.raises(ValueError, match="max_examples=0"):
        load_examples(DATA / "gsm8k.jsonl", tokenizer, max_examples=0)


# ---------------------------------------------------------------------------- text as written, errors' places


def test_a_csv_with_numeric_answers_trains(tmp_path, tokenizer):
    path = tmp_path / "gsm8k.csv"
    path.write_text("question,answer\nHow many?,16\nAnd now?,023689\n")
    examples = load_examples(path, tokenizer, format=PromptResponse("question", "answer"))
    assert [example["input_ids"] for example in examples] == [
        [BOS] + ids(tokenizer, "How many?16") + [EOS], [BOS] + ids(tokenizer, "And now?023689") + [EOS]]


def test_quotes_and_null_are_text(tmp_path, tokenizer):
    path = tmp_path / "rows.csv"
    path.write_text('prompt,response\n"""x""",null\n')
    [example] = load_examples(path, tokenizer)
    assert example["input_ids"] == [BOS] + ids(tokenizer, '"x"null') + [EOS]


@pytest.mark.parametrize(("format", "row"), [
    ("prompt_response", '{"prompt": "q", "response": 1.50}'),
    ("prompt_response", '{"prompt": 1e3, "response": "a"}'),
    ("text", '{"text": 16}'),
    ("chat", '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 1.50}]}'),
])
def test_a_json_number_in_a_text_field_is_refused_with_its_line(tmp_path, tokenizer, format, row):
    # JSON parsing keeps 1.50 as 1.5 and 1e3 as 1000.0: training on that text would not be the text as written.
    good = {"prompt_response": '{"prompt": "q", "response": "a"}', "text": '{"text": "a"}',
            "chat": '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}'}[format]
    path = tmp_path / "rows.jsonl"
    path.write_text(f"{good}\n{good}\n{row}\n")
    with pytest.raises(ValueError, match=rf"^{path}:3: field '\w+' holds a (float|int) .*not text; write it as a JSON"
                                         " string"):
        load_examples(path, tokenizer, format=format)


def test_a_bad_field_in_row_100_is_blamed_on_its_line(tmp_path, tokenizer):
    rows = [{"prompt": f"q{i}", "response": "a"} for i in range(120)]
    rows[99]["response"] = ["not", "text"]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(ValueError, match=rf"^{path}:100: field 'response' holds a list .*not text"):
        load_examples(path, tokenizer)


def test_rows_from_a_file_are_named_by_their_line(tmp_path, tokenizer):
    path = tmp_path / "rows.json"
    path.write_text('[\n  {"text": "a"},\n\n  {"title": "b"}\n]\n')  # the second object starts on line 4
    with pytest.raises(ValueError, match=rf"^{path}:4: missing field\(s\) \['text'\]"):
        load_examples(path, tokenizer, format="text")


# ---------------------------------------------------------------------------------------- empty responses


def test_empty_responses_are_counted_in_one_warning(tmp_path, tokenizer):
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": ""}, {"prompt": "d", "response": " "},
            {"prompt": "e", "response": "f"}]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.warns(UserWarning, match=rf"^{path}: 2 of 4 rows have an empty response") as record:
        examples = load_examples(path, tokenizer)
    assert len(record) == 1 and len(examples) == 4
    assert examples[1]["labels"] == [IGNORE_INDEX] * 2 + [EOS]  # what such a row teaches: only the eos


@pytest.mark.parametrize("rows", [
    [{"prompt": "a", "response": ""}, {"prompt": "b", "response": ""}],
    [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}],
    [{"text": ""}],
])
def test_no_row_with_a_response_is_an_error_naming_the_file(tmp_path, tokenizer, rows):
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(ValueError, match=rf"^{path}: all {len(rows)} rows have an empty response"):
        load_examples(path, tokenizer)
