"""KTO: the loss against hand arithmetic, and the unpaired data it reads."""

import csv
import json
import math
import warnings

import pytest
import torch

from lightning_rlhf import create_algorithm
from lightning_rlhf.data import DATA_MODULES, DataError, UnpairedDataModule
from lightning_rlhf.data.unpaired import pairs_to_unpaired
from lightning_rlhf.testing import make_batch, make_policy_module
from lightning_rlhf_plugins.kto import class_balance_warning
from tests.objective_fakes import GivenLogps


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# -- the loss -----------------------------------------------------------------------------
# Two matched rows, then their two mismatched rows (single tokens, so sums are the values):
#   row 0 desirable:   policy -1.0, reference -1.5  ->  r0 = 0.5
#   row 1 undesirable: policy -3.0, reference -2.0  ->  r1 = -1.0
#   mismatched:        policy -4.0, -5.0; reference -4.6, -5.2 -> log-ratios 0.6, 0.2
#   z0 = max(0, mean(0.6, 0.2)) = 0.4
# beta 1:
#   desirable:   1 - sigmoid(1 * (0.5 - 0.4)) = 1 - sigmoid(0.1) = 0.475021
#   undesirable: 1 - sigmoid(1 * (0.4 + 1.0)) = 1 - sigmoid(1.4) = 0.197816
#   loss = (0.475021 + 0.197816) / 2 = 0.336418
# w_D = 2: (2 * 0.475021 + 0.197816) / 2 = 0.573929
# beta 0.1 (default): (1 - sigmoid(0.01) + 1 - sigmoid(0.14)) / 2 = (0.497500 + 0.465057) / 2 = 0.481279
POLICY = [[-1.0], [-3.0], [-4.0], [-5.0]]
REFERENCE = [[-1.5], [-2.0], [-4.6], [-5.2]]
LABELS = {"label": torch.tensor([True, False]), "mismatched": torch.tensor([True, True])}


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"beta": 1.0}, 0.336418),
        ({"beta": 1.0, "desirable_weight": 2.0}, 0.573929),
        ({}, 0.481279),
    ],
)
def test_kto_loss_by_hand(kwargs, expected):
    ctx = GivenLogps(POLICY, REFERENCE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the balance check is tested below
        out = create_algorithm("kto", **kwargs).loss(ctx, LABELS)
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.metrics["kl"].item() == pytest.approx(0.4, abs=1e-6)
    beta = kwargs.get("beta", 0.1)  # rewards/* are beta * log-ratio, as DPO's
    assert out.metrics["rewards/chosen"].item() == pytest.approx(beta * 0.5, abs=1e-6)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(beta * -1.0, abs=1e-6)
    assert out.metrics["logps/chosen"].item() == pytest.approx(-1.0)
    assert out.metrics["logps/rejected"].item() == pytest.approx(-3.0)
    assert ctx.calls == {"policy": 1, "reference": 1}


def test_kto_gradient_signs_and_no_gradient_through_the_reference_point():
    ctx = GivenLogps(POLICY, REFERENCE)
    out = create_algorithm("kto", beta=1.0).loss(ctx, LABELS)
    out.loss.backward()
    # d/dr0 of (1 - sigmoid(r0 - z0)) / 2 = -sigmoid'(0.1) / 2; sigmoid' = s (1 - s)
    s_d, s_u = sigmoid(0.1), sigmoid(1.4)
    assert ctx.grad[0, 0].item() == pytest.approx(-s_d * (1 - s_d) / 2, abs=1e-6)  # raise the desirable
    assert ctx.grad[1, 0].item() == pytest.approx(+s_u * (1 - s_u) / 2, abs=1e-6)  # lower the undesirable
    assert ctx.grad[2:].abs().sum().item() == 0.0  # z0 is detached: mismatched rows get none


def test_kto_reference_point_leaves_out_rows_without_another_prompt():
    """Mismatched row 1 repeats its own prompt's completion: z0 = max(0, 0.6) from row 0 alone;
    with no row to estimate from, z0 = 0."""
    for found, z0 in (([True, False], 0.6), ([False, False], 0.0)):
        batch = {"label": LABELS["label"], "mismatched": torch.tensor(found)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = create_algorithm("kto", beta=1.0).loss(GivenLogps(POLICY, REFERENCE), batch)
        assert out.metrics["kl"].item() == pytest.approx(z0, abs=1e-6)
        expected = ((1 - sigmoid(0.5 - z0)) + (1 - sigmoid(z0 + 1.0))) / 2
        assert out.loss.item() == pytest.approx(expected, abs=1e-6)


def test_kto_reference_point_is_clamped_at_zero():
    # Mismatched log-ratios -0.5 and -0.1: mean -0.3 -> z0 = 0.
    # beta 1: desirable 1 - sigmoid(0.5) = 0.377541; undesirable 1 - sigmoid(1.0) = 0.268941
    ctx = GivenLogps(POLICY, [[-1.5], [-2.0], [-3.5], [-4.9]])
    out = create_algorithm("kto", beta=1.0).loss(ctx, LABELS)
    assert out.metrics["kl"].item() == 0.0
    assert out.loss.item() == pytest.approx((1 - sigmoid(0.5) + 1 - sigmoid(1.0)) / 2, abs=1e-6)


def test_kto_batch_with_only_desirable_examples_is_finite():
    # Both rows desirable: r = 0.5 and -1.0, z0 = 0.4, beta 1:
    # (1 - sigmoid(0.1) + 1 - sigmoid(-1.4)) / 2 = (0.475021 + 0.802184) / 2 = 0.638602
    ctx = GivenLogps(POLICY, REFERENCE)
    with pytest.warns(UserWarning, match="2 desirable and 0 undesirable"):
        out = create_algorithm("kto", beta=1.0).loss(ctx, {"label": torch.tensor([True, True]), "mismatched": LABELS["mismatched"]})
    out.loss.backward()
    assert out.loss.item() == pytest.approx((1 - sigmoid(0.1) + 1 - sigmoid(-1.4)) / 2, abs=1e-6)
    assert torch.isfinite(ctx.grad).all()
    assert all(torch.isfinite(v) for v in out.metrics.values())
    assert out.metrics["rewards/rejected"].item() == 0.0  # no undesirable example: 0 by convention


def test_kto_balance_warning_once_and_from_the_training_counts():
    kto = create_algorithm("kto")
    # The training data's counts win over the batch's: 30 desirable, 10 undesirable -> ratio 3.
    batch = dict(LABELS, train_label_counts=torch.tensor([30, 10]))
    with pytest.warns(UserWarning, match=r"30 desirable and 10 undesirable.*= 3,"):
        kto.loss(GivenLogps(POLICY, REFERENCE), batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second batch does not warn again
        kto.loss(GivenLogps(POLICY, REFERENCE), batch)


def test_kto_no_warning_inside_the_recommended_range():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create_algorithm("kto").loss(GivenLogps(POLICY, REFERENCE), dict(LABELS, train_label_counts=torch.tensor([10, 10])))


@pytest.mark.parametrize(
    ("counts", "weights", "warns"),
    [
        ((10, 10), (1.0, 1.0), False),  # 1
        ((4, 3), (1.0, 1.0), False),  # 4/3, the upper end
        ((9, 10), (1.0, 1.0), True),  # 0.9
        ((30, 10), (1.0, 1.0), True),  # 3
        ((30, 10), (1.0, 3.0), False),  # 30 / (3 * 10) = 1: the weights fix it
        ((10, 0), (1.0, 1.0), True),
    ],
)
def test_class_balance_ratio(counts, weights, warns):
    assert (class_balance_warning(*counts, *weights) is not None) == warns


def test_kto_rejects_bad_hyperparameters():
    for kwargs in ({"beta": 0.0}, {"desirable_weight": 0.0}, {"undesirable_weight": -1.0}):
        with pytest.raises(ValueError):
            create_algorithm("kto", **kwargs)


def test_kto_on_the_tiny_model_one_forward_for_matched_and_mismatched(tiny_tokenizer):
    module = make_policy_module(create_algorithm("kto"))
    batch = make_batch("unpaired", module.tokenizer)
    n = batch["label"].shape[0]
    assert batch["input_ids"].shape[0] == 2 * n
    rows_per_forward = []
    decoder = module.policy.get_decoder()
    decoder.register_forward_hook(lambda _, args, kwargs, out: rows_per_forward.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    out = module.algorithm.loss(module, batch)
    assert rows_per_forward == [2 * n]  # one policy forward for matched and mismatched rows
    assert torch.isfinite(out.loss)


# -- unpaired data ------------------------------------------------------------------------
def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def setup_unpaired(tokenizer, path, **kwargs):
    module = UnpairedDataModule(path=str(path), **kwargs)
    module.tokenizer = tokenizer
    module.setup("fit")
    return module


ROWS = [
    {"prompt": "How was it?", "completion": " Lovely.", "label": True},
    {"prompt": "Name a colour.", "completion": " Seven.", "label": False},
    {"prompt": "Say hi.", "completion": " Hi!", "label": "TRUE"},
]


def test_unpaired_is_a_registered_data_kind():
    assert DATA_MODULES["unpaired"] is UnpairedDataModule


def test_unpaired_batch_is_matched_then_mismatched(tmp_path, tiny_tokenizer):
    module = setup_unpaired(tiny_tokenizer, write_jsonl(tmp_path / "u.jsonl", ROWS))
    assert [r["label"] for r in module.train_rows] == [True, False, True]
    assert module.train_label_counts == (2, 1)
    batch = module.collator()(module.train_rows)
    assert batch["label"].tolist() == [True, False, True]
    assert batch["train_label_counts"].tolist() == [2, 1]

    def text(i, mask):
        return tiny_tokenizer.decode(batch["input_ids"][i][batch[mask][i]])

    prompts = ["How was it?", "Name a colour.", "Say hi."]
    completions = [" Lovely.<|eos|>", " Seven.<|eos|>", " Hi!<|eos|>"]
    for i in range(3):
        assert text(i, "completion_mask") == completions[i]
        assert text(3 + i, "completion_mask") == completions[(i + 1) % 3]  # prompt i, completion i+1
        assert text(3 + i, "attention_mask").startswith(prompts[i])


def test_mismatched_completion_is_cut_to_max_length(tiny_tokenizer):
    from lightning_rlhf.data.unpaired import UnpairedCollator

    rows = [
        {"prompt_ids": [1, 2, 3, 4, 5, 6], "completion_ids": [7, 8], "label": True},
        {"prompt_ids": [1], "completion_ids": [9, 10, 11, 12, 13, 14, 15], "label": False},
    ]
    batch = UnpairedCollator(pad_token_id=0, max_length=8)(rows)
    # Row 2 (mismatched): prompt of row 0 (6 tokens) + row 1's completion cut to 8 - 6 = 2 tokens.
    assert batch["attention_mask"][2].sum().item() == 8
    assert batch["input_ids"][2, 6:8].tolist() == [9, 10]
    assert batch["input_ids"].shape[1] == 8


def test_unpaired_labels_from_csv_strings(tmp_path, tiny_tokenizer):
    path = tmp_path / "u.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt", "completion", "label"])
        writer.writeheader()
        writer.writerows([{"prompt": "A?", "completion": " Yes.", "label": "True"}, {"prompt": "B?", "completion": " No.", "label": "false"}])
    module = setup_unpaired(tiny_tokenizer, path)
    assert [r["label"] for r in module.train_rows] == [True, False]


@pytest.mark.parametrize("bad", [1, 0, "yes", "1", "", [True]])
def test_bad_labels_are_located(tmp_path, tiny_tokenizer, bad):
    rows = [ROWS[0], {"prompt": "Q?", "completion": " A.", "label": bad}]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as error:
        setup_unpaired(tiny_tokenizer, path)
    assert (error.value.source, error.value.row, error.value.field) == (path, 2, "label")
    assert "bad.jsonl, row 2, field 'label'" in str(error.value)


def test_missing_label_and_completion_are_located(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "Q?", "completion": " A."}])
    with pytest.raises(DataError, match="row 1, field 'label': missing"):
        setup_unpaired(tiny_tokenizer, path)
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "Q?", "label": True}])
    with pytest.raises(DataError, match="row 1: an unpaired row needs"):
        setup_unpaired(tiny_tokenizer, path)


PAIRS = [
    {"prompt": "How was it?", "chosen": " Lovely.", "rejected": " Dull."},
    {"chosen": "Q: colour? A: Blue.", "rejected": "Q: colour? A: Seven."},  # implicit prompt
]


def test_pairs_to_unpaired():
    assert pairs_to_unpaired(PAIRS) == [
        {"prompt": "How was it?", "completion": " Lovely.", "label": True},
        {"prompt": "How was it?", "completion": " Dull.", "label": False},
        {"prompt": "Q: colour? A: ", "completion": "Blue.", "label": True},
        {"prompt": "Q: colour? A: ", "completion": "Seven.", "label": False},
    ]


def test_from_pairs_reads_a_preference_file_as_unpaired(tmp_path, tiny_tokenizer):
    pairs_path = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    direct = setup_unpaired(tiny_tokenizer, pairs_path, from_pairs=True)
    converted = setup_unpaired(tiny_tokenizer, write_jsonl(tmp_path / "u.jsonl", pairs_to_unpaired(PAIRS)))
    assert direct.train_rows == converted.train_rows
    assert direct.train_label_counts == (2, 2)


def _mismatches_of_own_prompt(batch, rows) -> int:
    """Mismatched rows whose completion is one of that same prompt's own completions."""
    n = len(rows)
    count = 0
    for i in range(n):
        ids = batch["input_ids"][n + i][batch["completion_mask"][n + i]].tolist()
        own = [r["completion_ids"] for r in rows if r["prompt_ids"] == rows[i]["prompt_ids"]]
        count += batch["mismatched"][i].item() and ids in own
    return count


def test_from_pairs_mismatched_rows_never_pair_a_prompt_with_its_own_completions(tmp_path, tiny_tokenizer):
    """from_pairs lays pair k out as (chosen k, rejected k); neither validation, read in
    order, nor shuffled training may pair prompt k with rejected k or chosen k."""
    pairs = [{"prompt": f"Question {k}?", "chosen": f" Good answer {k}.", "rejected": f" Bad {k}."} for k in range(12)]
    path = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    module = UnpairedDataModule(path=path, val_path=path, from_pairs=True, batch_size=4)
    module.tokenizer = tiny_tokenizer
    module.setup("fit")
    assert [r["label"] for r in module.val_rows[:4]] == [True, False, True, False]  # pairs side by side
    for loader in (module.val_dataloader(), module.train_dataloader()):
        for batch in loader:
            assert batch["mismatched"].all()  # every batch of 4 holds at least two prompts
            rows = [{"prompt_ids": batch["input_ids"][i][batch["attention_mask"][i] & ~batch["completion_mask"][i]].tolist(),
                     "completion_ids": batch["input_ids"][i][batch["completion_mask"][i]].tolist()} for i in range(len(batch["label"]))]
            assert _mismatches_of_own_prompt(batch, rows) == 0


def test_a_batch_of_one_prompt_has_no_mismatched_rows():
    from lightning_rlhf.data.unpaired import UnpairedCollator

    rows = [{"prompt_ids": [1, 2], "completion_ids": [3], "label": True}, {"prompt_ids": [1, 2], "completion_ids": [4], "label": False},
            {"prompt_ids": [5], "completion_ids": [6], "label": True}]
    batch = UnpairedCollator(pad_token_id=0, max_length=8)(rows)
    # rows 0 and 1 share a prompt, so both mismatch with row 2; row 2 with row 0
    assert batch["mismatched"].tolist() == [True, True, True]
    assert batch["input_ids"][3].tolist()[:3] == [1, 2, 6] and batch["input_ids"][5].tolist()[:2] == [5, 3]
    alone = UnpairedCollator(pad_token_id=0, max_length=8)(rows[:2])
    assert alone["mismatched"].tolist() == [False, False]
