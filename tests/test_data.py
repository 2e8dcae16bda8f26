"""Data pipeline: reading, formats and their labels token by token, truncation, collation, packing
(checked against the model on each example alone), the data module, and exact mid-epoch resume."""

import json
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import LlamaForCausalLM

from lightning_sft.data import (
    FALLBACK_CHAT_TEMPLATE,
    IGNORE_INDEX,
    ChatMessages,
    PlainText,
    PromptResponse,
    ResumableDataLoader,
    ResumableSampler,
    SFTDataModule,
    collate,
    collate_batches,
    collate_packed,
    load_examples,
    pack_examples,
    read_rows,
    tokenize_rows,
)
from lightning_sft.tokenizer import byte_tokenizer
from tests.conftest import tiny_llama_config

DATA = Path(__file__).parents[1] / "data" / "benchmarks"
PAD, BOS, EOS = 0, 1, 2
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
    " + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _byte_to_char() -> dict[int, str]:
    """GPT-2's byte -> printable character table, which the byte-level tokenizer's vocabulary is keyed by."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return {**{byte: chr(byte) for byte in printable}, **{byte: chr(256 + i) for i, byte in enumerate(others)}}


BYTE_TO_CHAR = _byte_to_char()


def ids(tokenizer, text: str) -> list[int]:
    """Token ids of `text` computed from the vocabulary directly (one token per UTF-8 byte)."""
    vocab = tokenizer.get_vocab()
    return [vocab[BYTE_TO_CHAR[byte]] for byte in text.encode("utf-8")]


def expected(pieces: list[tuple[list[int], bool]]) -> tuple[list[int], list[int]]:
    """input_ids and labels from (token ids, supervised?) pieces; position 0 is never a target."""
    input_ids = [token for piece, _ in pieces for token in piece]
    labels = [token if supervised else IGNORE_INDEX for piece, supervised in pieces for token in piece]
    return input_ids, [IGNORE_INDEX] + labels[1:]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------- read_rows


def test_read_rows_reads_every_suffix_and_a_load_dataset_dict(tmp_path):
    rows = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(5)]
    files = [write_jsonl(tmp_path / "a.jsonl", rows), tmp_path / "b.json", tmp_path / "c.parquet", tmp_path / "d.csv"]
    files[1].write_text(json.dumps(rows, indent=2))
    pd.DataFrame(rows).to_parquet(files[2])
    pd.DataFrame(rows).to_csv(files[3], index=False)
    for file in files:
        assert read_rows(file).to_list() == rows
        assert read_rows(str(file)).to_list() == rows
    assert read_rows({"path": "json", "data_files": str(files[0]), "split": "train"}).to_list() == rows
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.jsonl", "b.json", "c.parquet", "d.csv"]


def test_read_rows_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no file .*nothere.jsonl.*; for a Hugging Face Hub dataset pass"):
        read_rows(tmp_path / "nothere.jsonl")


def test_read_rows_unknown_suffix_lists_accepted(tmp_path):
    (tmp_path / "rows.txt").write_text("hello\n")
    with pytest.raises(ValueError, match=r"'\.txt'; accepted: \.jsonl, \.json, \.parquet, \.csv"):
        read_rows(tmp_path / "rows.txt")


def test_read_rows_names_the_malformed_jsonl_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c"\n{"text": "d"}\n')
    with pytest.raises(ValueError, match=rf"^{path}:3: Expecting ',' delimiter.*; fix or remove that line$"):
        read_rows(path)


def test_read_rows_names_the_malformed_line_of_a_json_document(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('[\n  {"text": "a"},\n  {"text": "b" "c"}\n]\n')
    with pytest.raises(ValueError, match=rf"^{path}:3: .*; fix or remove that line$"):
        read_rows(path)


@pytest.mark.parametrize(("name", "content"), [("empty.jsonl", ""), ("blank.jsonl", "\n \n"), ("header.csv", "a,b\n")])
def test_read_rows_empty_file(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=rf"{tmp_path / name} (is empty|has no rows)"):
        read_rows(tmp_path / name)


def test_read_rows_dict_needs_path_and_split():
    with pytest.raises(ValueError, match="needs `path` and `split`"):
        read_rows({"path": "openai/gsm8k", "name": "main"})


# ------------------------------------------------------------------------------------------------- formats


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
    with pytest.raises(ValueError, match="row 0: the chat template renders the first 3 messages"):
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
    for part in ("mine.jsonl row 0", "'messages'", "'prompt' + 'response'", "'text'", "['answer', 'question']",
                 "PromptResponse(prompt_field=..., response_field=...)", "adapter (gsm8k"):
        assert part in message


def test_explicit_format_names_the_missing_field(tokenizer):
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "c"}]
    with pytest.raises(ValueError, match=r"x.jsonl row 1: missing field\(s\) \['response'\]; the row has \['prompt'\]"):
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


# ----------------------------------------------------------------------------------------------- collate


def test_collate_pads_right_and_left():
    examples = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [-100]}]
    right = collate(examples, pad_token_id=0)
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["labels"].tolist() == [[-100, 6, 7], [-100, -100, -100]]
    assert all(tensor.dtype == torch.long for tensor in right.values())
    left = collate(examples, pad_token_id=9, padding_side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [9, 9, 8]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert left["labels"].tolist() == [[-100, 6, 7], [-100, -100, -100]]
    with pytest.raises(ValueError, match="padding_side='middle'"):
        collate(examples, pad_token_id=0, padding_side="middle")


# ----------------------------------------------------------------------------------------------- packing


def test_pack_examples_restarts_positions_and_masks_each_first_label():
    examples = [
        {"input_ids": [1, 10, 11], "labels": [-100, 10, 11]},
        {"input_ids": [12, 13], "labels": [12, 13]},  # a first label that would be predicted across examples
        {"input_ids": [1, 14, 15], "labels": [-100, -100, 15]},
    ]
    rows = pack_examples(examples, max_length=6)
    assert rows == [
        {"input_ids": [1, 10, 11, 12, 13], "labels": [-100, 10, 11, -100, 13], "position_ids": [0, 1, 2, 0, 1]},
        {"input_ids": [1, 14, 15], "labels": [-100, -100, 15], "position_ids": [0, 1, 2]},
    ]
    batch = collate_packed(rows, pad_token_id=0)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["input_ids"].tolist() == [[1, 10, 11, 12, 13], [1, 14, 15, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 10, 11, -100, 13], [-100, -100, 15, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 0, 1]]
    with pytest.raises(ValueError, match="more than max_length=2"):
        pack_examples(examples, max_length=2)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_packed_examples_give_the_logits_and_loss_of_each_example_alone(tokenizer, attention):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(attn_implementation=attention)).eval()
    rows = [{"prompt": "2+2=", "response": "4"}, {"prompt": "Capital of France?", "response": "Paris"},
            {"prompt": "x", "response": "yz"}, {"prompt": "Say hi.", "response": "hi there"}]
    examples = tokenize_rows(rows, tokenizer, max_length=40)
    packed = pack_examples(examples, max_length=40)
    assert len(packed) == 2  # one row holds several examples, the other is shorter: padding is exercised
    batch = collate_packed(packed, pad_token_id=PAD)
    with torch.no_grad():
        output = model(**batch, use_cache=False)
        alone = [model(torch.tensor([example["input_ids"]])).logits[0] for example in examples]
    example_index = 0
    for row, packed_row in enumerate(packed):
        for start in [i for i, position in enumerate(packed_row["position_ids"]) if position == 0]:
            example = examples[example_index]
            end = start + len(example["input_ids"])
            assert batch["input_ids"][row, start:end].tolist() == example["input_ids"]
            torch.testing.assert_close(output.logits[row, start:end], alone[example_index])
            example_index += 1
    assert example_index == len(examples)
    # HF's loss over the packed batch = the token-weighted mean of each example's summed loss alone.
    summed_alone = sum(
        torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(example["labels"][1:]), reduction="sum")
        for logits, example in zip(alone, examples)
    )
    targets = sum((torch.tensor(example["labels"][1:]) != IGNORE_INDEX).sum() for example in examples)
    torch.testing.assert_close(output.loss, summed_alone / targets)


# ----------------------------------------------------------------------------------------- SFTDataModule


@pytest.fixture
def rows_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "rows.jsonl", [{"text": f"sample {i:02d}"} for i in range(40)])


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"train": "missing.jsonl"}, FileNotFoundError, "train: no file 'missing.jsonl'"),
        ({"train": "rows.txt"}, ValueError, "suffix '.txt'"),
        ({"train": {"path": "openai/gsm8k"}}, ValueError, "train=.*needs `path` and `split`"),
        ({"train": 3}, ValueError, "train=3: pass a file path"),
        ({"val": "missing.jsonl"}, FileNotFoundError, "val: no file"),
        ({"format": "xml"}, ValueError, "format='xml'"),
        ({"format": 7}, ValueError, "format=7"),
        ({"adapter": "gsm9k"}, ValueError, "adapter='gsm9k'"),
        ({"batch_size": 0}, ValueError, "batch_size=0"),
        ({"batch_size": 2.0}, ValueError, "batch_size=2.0"),
        ({"val_fraction": 1.0}, ValueError, r"val_fraction=1.0; pass a number in \[0, 1\)"),
        ({"val_fraction": -0.1}, ValueError, "val_fraction=-0.1"),
        ({"val_fraction": "0.1"}, ValueError, "val_fraction='0.1'"),
        ({"seed": "1"}, ValueError, "seed='1'"),
        ({"num_workers": -1}, ValueError, "num_workers=-1"),
        ({"tokenizer": 5}, ValueError, "tokenizer=5"),
    ],
)
def test_data_module_validates_arguments(rows_file, monkeypatch, overrides, error, match):
    monkeypatch.chdir(rows_file.parent)
    (rows_file.parent / "rows.txt").write_text("x\n")
    with pytest.raises(error, match=match):
        SFTDataModule(**{"train": str(rows_file), **overrides})


def test_data_module_needs_a_tokenizer(rows_file):
    data = SFTDataModule(str(rows_file))
    with pytest.raises(ValueError, match="takes the tokenizer from the LightningModule's `tokenizer`"):
        data.setup("fit")


def test_data_module_loads_a_tokenizer_by_path(rows_file, tmp_path):
    byte_tokenizer().save_pretrained(tmp_path / "tokenizer")
    data = SFTDataModule(str(rows_file), tokenizer=str(tmp_path / "tokenizer"), val_fraction=0)
    data.setup("fit")
    assert data.train_examples[0]["input_ids"] == [BOS] + ids(data.tokenizer, "sample 00") + [EOS]


def texts(tokenizer, examples: list[dict]) -> list[str]:
    return [tokenizer.decode(example["input_ids"], skip_special_tokens=True) for example in examples]


def data_module(source, tokenizer, **kwargs) -> SFTDataModule:
    data = SFTDataModule(source, **kwargs)
    data.tokenizer_name = None
    data.trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    data.trainer.strategy.connect(_ModuleWithTokenizer(tokenizer))
    data.setup("fit")
    return data


class _ModuleWithTokenizer(pl.LightningModule):
    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer


def test_validation_split_is_carved_by_seed(rows_file, tokenizer):
    first = data_module(str(rows_file), tokenizer, val_fraction=0.25, seed=1)
    again = data_module(str(rows_file), tokenizer, val_fraction=0.25, seed=1)
    other = data_module(str(rows_file), tokenizer, val_fraction=0.25, seed=2)
    train, val = texts(tokenizer, first.train_examples), texts(tokenizer, first.val_examples)
    assert (len(train), len(val)) == (30, 10)
    assert sorted(train + val) == [f"sample {i:02d}" for i in range(40)]
    assert texts(tokenizer, again.val_examples) == val
    assert texts(tokenizer, other.val_examples) != val
    assert len(first.val_dataloader()) == 3  # 10 examples in batches of 4


def test_validation_split_must_leave_training_examples(tmp_path, tokenizer):
    rows = write_jsonl(tmp_path / "two.jsonl", [{"text": "a"}, {"text": "b"}])
    with pytest.raises(ValueError, match="has 2 usable examples: val_fraction=0.6 leaves none for training"):
        data_module(str(rows), tokenizer, val_fraction=0.6)
    data = data_module(str(rows), tokenizer, val_fraction=0.4)
    assert sorted(texts(tokenizer, data.train_examples + data.val_examples)) == ["a", "b"]


def test_data_module_errors_name_the_file_row(tmp_path, tokenizer):
    rows = [{"text": f"row {i}"} for i in range(10)]
    rows[7] = {"title": "no text"}
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(ValueError, match=r"rows.jsonl row 7: missing field\(s\) \['text'\]; the row has \['title'\]"):
        data_module(str(path), tokenizer, format="text", val_fraction=0.3)


def test_no_validation_with_val_fraction_zero_and_explicit_val(rows_file, tmp_path, tokenizer):
    data = data_module(str(rows_file), tokenizer, val_fraction=0)
    assert len(data.train_examples) == 40 and data.val_dataloader() == []
    val = write_jsonl(tmp_path / "val.jsonl", [{"text": "held out"}])
    data = data_module(str(rows_file), tokenizer, val=str(val))
    assert len(data.train_examples) == 40 and texts(tokenizer, data.val_examples) == ["held out"]


def epoch_order(data: SFTDataModule, epoch: int) -> list[str]:
    loader = data.train_dataloader()
    loader.sampler.set_epoch(epoch)
    decode = data.tokenizer.batch_decode
    return [text for batch in loader for text in decode(batch["input_ids"], skip_special_tokens=True)]


def test_training_order_is_a_deterministic_shuffle_by_seed_and_epoch(rows_file, tokenizer):
    data = data_module(str(rows_file), tokenizer, val_fraction=0, seed=5)
    order = epoch_order(data, 0)
    assert sorted(order) == [f"sample {i:02d}" for i in range(40)]
    assert order != sorted(order)
    assert epoch_order(data_module(str(rows_file), tokenizer, val_fraction=0, seed=5), 0) == order
    assert epoch_order(data, 1) != order and sorted(epoch_order(data, 1)) == sorted(order)
    assert epoch_order(data_module(str(rows_file), tokenizer, val_fraction=0, seed=6), 0) != order


def test_sampler_shards_disjointly_by_rank():
    shards = [list(ResumableSampler(10, num_replicas=2, rank=rank, seed=0)) for rank in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 5
    assert sorted(shards[0] + shards[1]) == list(range(10))


def test_data_module_packing_batches(rows_file, tokenizer):
    data = data_module(str(rows_file), tokenizer, val_fraction=0.1, packing=True, max_length=40, batch_size=2)
    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["input_ids"].shape[1] <= 40
    example_length = len([BOS] + ids(tokenizer, "sample 00") + [EOS])
    assert sum(len(row["input_ids"]) for row in data.train_examples) == 36 * example_length


def test_loader_state_is_kept_until_the_resumed_epoch_starts(rows_file, tokenizer):
    data = data_module(str(rows_file), tokenizer, val_fraction=0, batch_size=4)
    loader = data.train_dataloader()
    state = {**loader.state_dict(), "epoch": 1, "batches_consumed": 3}
    loader.load_state_dict(state)
    assert loader.state_dict() == state  # a checkpoint written before the first batch keeps the position
    loader.sampler.set_epoch(1)
    assert len(list(loader)) == 10 - 3 and loader.state_dict() == {**state, "batches_consumed": 10}


def test_loader_state_with_another_layout_warns_and_approximates(rows_file, tokenizer):
    data = data_module(str(rows_file), tokenizer, val_fraction=0, batch_size=4)
    loader = data.train_dataloader()
    state = {**loader.state_dict(), "batches_consumed": 3, "batch_size": 2}
    with pytest.warns(UserWarning, match="exact batch order cannot be restored"):
        loader.load_state_dict(state)
    assert len(list(loader)) == 10 - 1  # 6 samples of 40 consumed = 1 batch of 4


# ------------------------------------------------------------------------------------------ exact resume


class BatchRecorder(pl.LightningModule):
    """Records the texts of every training batch it receives; writes them per rank when training ends."""

    def __init__(self, record: Path):
        super().__init__()
        self.tokenizer = byte_tokenizer()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.record = record
        self.batches: list[list[str]] = []

    def training_step(self, batch, batch_idx):
        self.batches.append(self.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True))
        return self.weight * batch["labels"].float().mean()

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_train_end(self):
        Path(f"{self.record}.rank{self.global_rank}.json").write_text(json.dumps(self.batches))


def fit(tmp_path: Path, name: str, max_steps: int, *, ckpt_path=None, save_every=None, devices=1, accumulate=1,
        **settings) -> tuple[pl.Trainer, list[list[list[str]]]]:
    """Fit a BatchRecorder on 24 rows (21 for training: 11 batches of 2 per epoch by default); returns the
    trainer and, per rank, the texts of each batch it trained on."""
    data_file = write_jsonl(tmp_path / "train.jsonl", [{"text": f"sample {i:02d}"} for i in range(24)])
    settings = {"batch_size": 2, "max_length": 16, "val_fraction": 0.125, "seed": 3, **settings}
    checkpoints = ModelCheckpoint(
        tmp_path / "checkpoints", filename="{step}", every_n_train_steps=save_every, save_top_k=-1
    )
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp_fork" if devices > 1 else "auto", max_steps=max_steps,
        accumulate_grad_batches=accumulate, logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, enable_checkpointing=bool(save_every), callbacks=[checkpoints] if save_every else [],
    )
    trainer.fit(BatchRecorder(tmp_path / name), SFTDataModule(str(data_file), **settings), ckpt_path=ckpt_path)
    records = [Path(f"{tmp_path / name}.rank{rank}.json") for rank in range(devices)]
    return trainer, [json.loads(record.read_text()) for record in records]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, list[list[str]]]:
    """30 steps (almost 3 epochs of 11 batches) with a checkpoint after every step."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    _, [batches] = fit(tmp_path, "full", 30, save_every=1)
    return tmp_path, batches


def test_uninterrupted_run_reshuffles_each_epoch(uninterrupted):
    _, batches = uninterrupted
    epochs = [[text for batch in batches[start:start + 11] for text in batch] for start in (0, 11)]
    assert len(batches) == 30 and sorted(epochs[0]) == sorted(epochs[1]) and epochs[0] != epochs[1]
    assert len(set(epochs[0])) == 21


@pytest.mark.parametrize("step", [4, 11, 15, 29])  # mid epoch 0, end of epoch 0, mid epoch 1, mid epoch 2
def test_resume_from_a_mid_epoch_checkpoint_sees_the_uninterrupted_batches(uninterrupted, step):
    tmp_path, batches = uninterrupted
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, [resumed] = fit(tmp_path, f"resumed{step}", 30, ckpt_path=tmp_path / "checkpoints" / f"step={step}.ckpt")
    assert resumed == batches[step:]
    assert not [warning for warning in caught if "not resumable" in str(warning.message)]


def test_resume_without_the_loader_state_would_repeat_the_epoch(uninterrupted, monkeypatch):
    """The control: with the state ignored, the resumed epoch restarts, so the comparison above can fail."""
    tmp_path, batches = uninterrupted
    monkeypatch.setattr(ResumableDataLoader, "load_state_dict", lambda self, state: None)
    _, [resumed] = fit(tmp_path, "ignored", 30, ckpt_path=tmp_path / "checkpoints" / "step=4.ckpt")
    assert resumed != batches[4:] and resumed[:7] == batches[:7]


def test_resume_with_gradient_accumulation_and_workers(tmp_path):
    settings = {"accumulate": 2, "num_workers": 2}  # 6 optimizer steps per epoch of 11 batches
    _, [batches] = fit(tmp_path, "full", 12, save_every=1, **settings)
    assert len(batches) == 22
    for step, consumed in [(3, 6), (8, 15)]:  # mid epoch 0; mid epoch 1 (11 + 4 batches)
        checkpoint = tmp_path / "checkpoints" / f"step={step}.ckpt"
        _, [resumed] = fit(tmp_path, f"resumed{step}", 12, ckpt_path=checkpoint, **settings)
        assert resumed == batches[consumed:]


@pytest.mark.slow
def test_resume_with_two_processes_sees_each_ranks_uninterrupted_batches(tmp_path):
    settings = {"devices": 2, "val_fraction": 0}  # 12 rows per rank: 6 batches of 2 per epoch
    _, ranks = fit(tmp_path, "full", 14, save_every=1, **settings)
    first_epoch = [text for rank in ranks for batch in rank[:6] for text in batch]
    assert sorted(first_epoch) == [f"sample {i:02d}" for i in range(24)]  # the ranks' shards are disjoint
    _, resumed = fit(tmp_path, "resumed", 14, ckpt_path=tmp_path / "checkpoints" / "step=8.ckpt", **settings)
    assert resumed == [rank[8:] for rank in ranks]


def test_collate_batches_keeps_order_and_sizes():
    examples = [{"input_ids": [1] * (i + 2), "labels": [-100] + [5] * (i + 1)} for i in range(5)]
    batches = collate_batches(examples, pad_token_id=0, batch_size=2)
    assert [b["input_ids"].shape for b in batches] == [(2, 3), (2, 5), (1, 6)]
    assert [int(b["attention_mask"].sum()) for b in batches] == [2 + 3, 4 + 5, 6]
