"""Collation and packing, packed batches checked against the model on each example alone."""

import pytest
import torch
from transformers import LlamaForCausalLM

from lightning_sft.data import collate, collate_batches, collate_packed, pack_examples, tokenize_rows
from lightning_sft.labels import IGNORE_INDEX
from tests.conftest import tiny_llama_config
from tests.data_helpers import PAD


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




def test_collate_batches_keeps_order_and_sizes():
    examples = [{"input_ids": [1] * (i + 2), "labels": [-100] + [5] * (i + 1)} for i in range(5)]
    batches = collate_batches(examples, pad_token_id=0, batch_size=2)
    assert [b["input_ids"].shape for b in batches] == [(2, 3), (2, 5), (1, 6)]
    assert [int(b["attention_mask"].sum()) for b in batches] == [2 + 3, 4 + 5, 6]
