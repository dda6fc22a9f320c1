"""The recipe knobs of masked-LM pre-training, through the config a run reads: the mask rate
(30% with predictions sized to it), the replacement split (80/10/10 or mask-only), and the
sequence-length warm-up schedule (rows cut per stage, switching at the right step, resumable)."""
import numpy as np
import pytest

from data_cases import prepared
from flaxbert.data.length_schedule import length_at, parse_length_schedule
from flaxbert.training.config import check_config, default_config
from flaxbert.training.sources import PretrainingData


def _config(data, **data_fields):
    c = default_config()
    c.data.train = data
    c.data.shuffle_buffer = 0
    c.train.num_steps, c.train.global_batch_size = 8, 32
    for k, v in data_fields.items():
        c.data[k] = v
    check_config(c)
    return c


def _actions(batches, mask_id, special):
    """Over the batches: masked fraction of the non-special tokens and, of the chosen tokens,
    the fractions that became [MASK], a random token, or stayed."""
    chosen = mask = random = kept = candidates = 0
    for b in batches:
        rows = np.arange(len(b["input_ids"]))[:, None]
        real = b["masked_weights"] > 0
        new = b["input_ids"][rows, b["masked_positions"]][real]
        old = b["masked_ids"][real]
        chosen += real.sum()
        mask += (new == mask_id).sum()
        kept += (new == old).sum()
        random += ((new != mask_id) & (new != old)).sum()
        original = b["input_ids"].copy()
        original[rows, b["masked_positions"]] = np.where(real, b["masked_ids"],
                                                         original[rows, b["masked_positions"]])
        candidates += ((b["attention_mask"] > 0) & ~special[original]).sum()
    return chosen, chosen / candidates, mask / chosen, random / chosen, kept / chosen


@pytest.fixture(scope="module")
def data(minilm_dir):
    return prepared(minilm_dir, "full-sentences")


@pytest.fixture(scope="module")
def tables(data):
    from flaxbert.data.pipeline import _tables
    from flaxbert.data.prepare import read_manifest
    info = read_manifest([data])
    return _tables(info["tokenizer_dir"], tuple(info["tokenizer"]["all_special_ids"]))


@pytest.mark.parametrize("split, want", [((0.8, 0.1), (0.8, 0.1, 0.1)),
                                         ((1.0, 0.0), (1.0, 0.0, 0.0))],
                         ids=["80-10-10", "mask-only"])
def test_thirty_percent_masking_statistics(data, tables, split, want):
    c = _config(data, mlm_probability=0.30, max_predictions_per_seq=0,
                mask_token_fraction=split[0], random_token_fraction=split[1])
    source = PretrainingData(c)
    assert source.masking.predictions(64) == round(0.30 * 64) == 19
    assert source.example_batch(2)["masked_positions"].shape == (2, 19)
    it = source.train_batches(None)
    batches = [next(it) for _ in range(6)]
    assert all(b["masked_positions"].shape == (32, 19) for b in batches)
    chosen, rate, mask, random, kept = _actions(batches, tables.mask_id, tables.special)
    assert chosen > 3000
    assert abs(rate - 0.30) < 0.01
    assert abs(mask - want[0]) < 0.025 and abs(random - want[1]) < 0.02 and \
        abs(kept - want[2]) < 0.02


def test_a_cap_below_the_rate_is_what_the_old_default_did(data, tables, caplog):
    # max_predictions_per_seq=10 < round(0.3 * 64): the run says so, and the cap holds.
    c = _config(data, mlm_probability=0.30, max_predictions_per_seq=10)
    source = PretrainingData(c)
    assert "caps masking below data.mlm_probability=0.3" in caplog.text
    batch = next(source.train_batches(None))
    assert batch["masked_positions"].shape == (32, 10) and batch["masked_weights"].sum(1).max() == 10


def test_length_schedule_switches_at_the_right_step(data):
    spec = "16:0.25,32:0.25,64:0.5"
    assert parse_length_schedule(spec, 8, 64) == ((0, 16), (2, 32), (4, 64))
    assert [length_at(((0, 16), (2, 32), (4, 64)), i, 64) for i in range(6)] == \
        [16, 16, 32, 32, 64, 64]
    c = _config(data, seq_length_schedule=spec, max_predictions_per_seq=0)
    plain = PretrainingData(_config(data, masking=False)).train_batches(None)
    c_plain = _config(data, seq_length_schedule=spec, masking=False)
    cut = PretrainingData(c_plain).train_batches(None)
    masked = PretrainingData(c).train_batches(None)
    sep = None
    for step in range(8):
        full, short, m = next(plain), next(cut), next(masked)
        length = 16 if step < 2 else 32 if step < 4 else 64
        assert short["input_ids"].shape == (32, length) == m["input_ids"].shape, step
        assert m["masked_positions"].shape == (32, round(0.15 * length))
        for row in range(32):
            n = int(full["attention_mask"][row].sum())
            got = short["input_ids"][row]
            if n > length:  # cut: the first length-1 tokens, then the row's closing token
                sep = full["input_ids"][row, n - 1] if sep is None else sep
                assert full["input_ids"][row, n - 1] == sep == got[-1]
                np.testing.assert_array_equal(got[:-1], full["input_ids"][row, :length - 1])
                assert short["attention_mask"][row].all()
            else:
                np.testing.assert_array_equal(got, full["input_ids"][row, :length])
    assert sep is not None, "no row was long enough to be cut"
    # A resumed stream is at the stage of its step.
    state = dict(PretrainingData(c_plain).train_batches(None).state(), next_batch=3)
    from flaxbert.data.pipeline import BatchIterator
    resumed = BatchIterator.from_state(state, process_index=0)
    assert [next(resumed)["input_ids"].shape[1] for _ in range(2)] == [32, 64]


@pytest.mark.parametrize("fields, match", [
    (dict(seq_length_schedule="128:0.9"), "fractions must be in"),
    (dict(seq_length_schedule="512:0.5,128:0.5"), "lengths must increase"),
    (dict(seq_length_schedule="128-0.9,512:0.1"), "'128-0.9' is not LEN:FRACTION"),
    (dict(mask_token_fraction=0.95, random_token_fraction=0.1), "must be <= 1"),
    (dict(random_token_fraction=-0.1), r"data.random_token_fraction=-0.1 must be in \[0, 1\]"),
    (dict(max_predictions_per_seq=-1), "max_predictions_per_seq=-1 must be >= 1, or 0"),
])
def test_bad_knobs_name_the_field(fields, match):
    c = default_config()
    c.data.train = "somewhere"
    for k, v in fields.items():
        c.data[k] = v
    with pytest.raises(ValueError, match=match):
        check_config(c, "recipe.py")


def test_a_stage_longer_than_the_data_is_refused(data):
    c = _config(data, seq_length_schedule="64:0.5,128:0.5")
    with pytest.raises(ValueError, match="length 128 exceeds the data's max_seq_length=64"):
        PretrainingData(c)
