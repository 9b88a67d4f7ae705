"""The ranking data kind: K completions per prompt, parsed, ranked and batched."""

import json

import pytest
import torch

from lightning_rlhf.data import DATA_MODULES, DataError, RankingDataModule
from lightning_rlhf.data.ranking import dense_ranks, ranked_pair_mask
from lightning_rlhf.testing import make_batch


def _write(tmp_path, rows):
    path = tmp_path / "ranked.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _load(tmp_path, tokenizer, rows, **kwargs):
    module = RankingDataModule(path=_write(tmp_path, rows), max_length=64, **kwargs)
    module.tokenizer = tokenizer
    module.setup("fit")
    return module


def test_registered_for_its_kind():
    assert DATA_MODULES["ranking"] is RankingDataModule


def test_batch_layout(tmp_path, tiny_tokenizer):
    rows = [
        {"prompt": "Q1", "completions": [" best", " middle", " worst"]},  # K = 3, best first
        {"prompt": "Q2", "completions": [" low", " high"], "scores": [0.1, 0.9]},  # K = 2, by score
    ]
    module = _load(tmp_path, tiny_tokenizer, rows)
    batch = module.collator()(module.train_rows)
    assert set(batch) == {"input_ids", "attention_mask", "completion_mask", "logp_index", "group_index", "rank"}
    assert batch["input_ids"].shape[0] == 5
    assert batch["group_index"].tolist() == [0, 0, 0, 1, 1]
    assert batch["rank"].tolist() == [0, 1, 2, 0, 1]
    # Rows of a prompt are best first: the 0.9-scored " high" comes before " low".
    texts = [tiny_tokenizer.decode(ids[mask], skip_special_tokens=True)
             for ids, mask in zip(batch["input_ids"], batch["completion_mask"])]
    assert texts == [" best", " middle", " worst", " high", " low"]


def test_pairs_of_a_batch():
    group_index, rank = torch.tensor([0, 0, 0, 1, 1]), torch.tensor([0, 1, 2, 0, 1])
    pairs = ranked_pair_mask(group_index, rank).nonzero().tolist()
    # 3 pairs from the 3-way ranking, 1 from the 2-way one, none across prompts.
    assert pairs == [[0, 1], [0, 2], [1, 2], [3, 4]]


def test_ties_share_a_rank_and_form_no_pair():
    assert dense_ranks([0.2, 0.9, 0.2]) == [1, 0, 1]
    group_index, rank = torch.zeros(3, dtype=torch.long), torch.tensor([0, 0, 1])
    assert ranked_pair_mask(group_index, rank).nonzero().tolist() == [[0, 2], [1, 2]]


def test_all_tied_row_is_dropped_and_counted(tmp_path, tiny_tokenizer):
    rows = [
        {"prompt": "Q1", "completions": [" a", " b"], "scores": [1, 1]},
        {"prompt": "Q2", "completions": [" a", " b"]},
    ]
    module = _load(tmp_path, tiny_tokenizer, rows)
    assert len(module.train_rows) == 1
    assert "1 all completions tied" in module.drop_reports[0]


@pytest.mark.parametrize(
    "row, field, problem",
    [
        ({"prompt": "Q", "completions": [" only one"]}, "completions", "at least 2"),
        ({"prompt": "Q"}, "completions", "missing"),
        ({"prompt": "Q", "completions": [" a", 3]}, "completions[1]", "expected a string"),
        ({"prompt": "Q", "completions": [" a", " b"], "scores": [1.0]}, "scores", "list of 2 numbers"),
        ({"prompt": "Q", "completions": [" a", " b"], "scores": [1.0, "x"]}, "scores[1]", "expected a number"),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path, tiny_tokenizer, row, field, problem):
    good = {"prompt": "Q0", "completions": [" a", " b"]}
    with pytest.raises(DataError) as error:
        _load(tmp_path, tiny_tokenizer, [good, row])
    assert error.value.row == 2 and error.value.field == field and problem in error.value.problem
    assert error.value.source.endswith("ranked.jsonl")


def test_sample_rows_make_a_batch(tiny_tokenizer):
    batch = make_batch("ranking", tiny_tokenizer)
    # 3 + 2 + 3 completions; the third prompt's first two tie.
    assert batch["group_index"].tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert batch["rank"].tolist() == [0, 1, 2, 0, 1, 0, 0, 1]
    assert ranked_pair_mask(batch["group_index"], batch["rank"]).sum() == 3 + 1 + 2
