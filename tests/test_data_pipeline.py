"""flaxbert.data.pipeline: batch keys and dtypes the trainer relies on, rows are the prepared
records, resuming from a saved state continues the same stream, hosts read disjoint data,
evaluation is one fixed pass, mixed tokenizers and bad arguments are refused."""
import collections
import json

import numpy as np
import pytest

from data_cases import prepared, read_records, trained_tokenizer
from flaxbert.data import bench
from flaxbert.data.masking import MaskingConfig
from flaxbert.data.pipeline import BatchIterator, make_dataset, make_eval_dataset
from flaxbert.tokenizer import Tokenizer

ONE_HOST = dict(process_index=0, process_count=1)


def _rows(batch):
    """The unpadded token rows of a batch, as tuples."""
    return [tuple(ids[mask > 0]) for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]


def _all_rows(dataset):
    return [row for batch in dataset.as_numpy_iterator() for row in _rows(batch)]


def _unmasked(batch):
    """input_ids with the original tokens put back at the masked positions."""
    ids = batch["input_ids"].copy()
    rows = np.arange(len(ids))[:, None]
    real = batch["masked_weights"] > 0
    ids[rows, batch["masked_positions"]] = np.where(real, batch["masked_ids"],
                                                   ids[rows, batch["masked_positions"]])
    return ids


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_batches_have_the_keys_and_dtypes_the_trainer_expects(minilm_dir):
    data = prepared(minilm_dir, "nsp")
    masked = next(BatchIterator(data, global_batch_size=8, masking=MaskingConfig(whole_word=True),
                                **ONE_HOST))
    raw = next(BatchIterator(data, global_batch_size=8, masking=None, **ONE_HOST))
    shapes = dict(input_ids=(8, 64), attention_mask=(8, 64), token_type_ids=(8, 64),
                  masked_positions=(8, 10), masked_ids=(8, 10), masked_weights=(8, 10),
                  pair_label=(8,))
    assert {k: v.shape for k, v in masked.items()} == shapes
    assert {k: v.dtype for k, v in masked.items()} == {
        k: np.float32 if k == "masked_weights" else np.int32 for k in shapes}
    assert set(raw) == {"input_ids", "attention_mask", "token_type_ids", "pair_label"}
    # The same rows, unmasked: every row is a prepared record, padded with the pad id.
    records = {tuple(r["input_ids"]): r for r in read_records(data)}
    for row, types, label in zip(_rows(raw), raw["token_type_ids"], raw["pair_label"]):
        assert row in records
        assert (types[:len(row)] == records[row]["token_type_ids"]).all() and not types[len(row):].any()
        assert label == records[row]["pair_label"][0]
    assert (raw["input_ids"][raw["attention_mask"] == 0] == 0).all()
    np.testing.assert_array_equal(raw["attention_mask"], masked["attention_mask"])
    assert (masked["input_ids"] != raw["input_ids"]).any()
    np.testing.assert_array_equal(_unmasked(masked), raw["input_ids"])


def test_unmasked_full_sentences_pad_with_the_tokenizers_pad_id():
    tokenizer_dir = trained_tokenizer("sentencepiece", "xlnet")
    batch = next(BatchIterator(prepared(tokenizer_dir, "full-sentences"), global_batch_size=16,
                               masking=None, **ONE_HOST))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
    pad = Tokenizer.from_pretrained(tokenizer_dir).pad_token_id
    assert pad != 0 and (batch["input_ids"][batch["attention_mask"] == 0] == pad).all()
    assert (batch["attention_mask"] == 0).any()


def test_resuming_from_state_continues_the_same_stream(minilm_dir):
    data = prepared(minilm_dir, "nsp")
    kwargs = dict(global_batch_size=4, masking=MaskingConfig(whole_word=True), seed=5,
                  shuffle_buffer=64, **ONE_HOST)
    it = BatchIterator(data, **kwargs)
    first = [next(it) for _ in range(3)]
    state = json.loads(json.dumps(it.state()))
    assert state["next_batch"] == 3
    rest = [next(it) for _ in range(4)]
    resumed = BatchIterator.from_state(state, process_index=0)
    assert resumed.batch_index == 3
    for want in rest:
        assert _same(next(resumed), want)
    again = BatchIterator(data, **kwargs)
    assert all(_same(next(again), want) for want in first + rest)
    other = next(BatchIterator(data, **{**kwargs, "seed": 6}))
    assert not _same(other, first[0])


@pytest.mark.parametrize("split", ["train", "validation"])  # 4 shards: by file; 1 shard: by record
def test_hosts_read_disjoint_parts(split, minilm_dir):
    data = prepared(minilm_dir, "nsp", validation_fraction=0.1)
    every = collections.Counter(tuple(r["input_ids"]) for r in read_records(data, split))
    hosts = []
    for index in range(2):
        ds = make_dataset(data, split, global_batch_size=8, masking=None, shuffle_buffer=0,
                          repeat=False, drop_remainder=False, process_index=index, process_count=2)
        batches = list(ds.as_numpy_iterator())
        assert batches[0]["input_ids"].shape[0] == 4
        hosts.append(collections.Counter(row for b in batches for row in _rows(b)))
    assert hosts[0] and hosts[1] and not set(hosts[0]) & set(hosts[1])
    assert hosts[0] + hosts[1] == every


def test_eval_is_one_fixed_pass(minilm_dir):
    data = prepared(minilm_dir, "nsp", validation_fraction=0.1)
    make = lambda: list(make_eval_dataset(data, global_batch_size=8, masking=MaskingConfig(),
                                          **ONE_HOST).as_numpy_iterator())
    first, second = make(), make()
    assert len(first) == len(second) and all(_same(a, b) for a, b in zip(first, second))
    rows = collections.Counter(row for b in first  # the last batch's padding rows weigh 0
                               for row, weight in zip(_rows(dict(b, input_ids=_unmasked(b))),
                                                      b["example_weights"]) if weight > 0)
    assert rows == collections.Counter(tuple(r["input_ids"]) for r in read_records(data, "validation"))


def test_bad_arguments_fail_clearly(minilm_dir, tmp_path):
    data = prepared(minilm_dir, "nsp")
    other = prepared(trained_tokenizer("wordpiece"), "nsp")
    with pytest.raises(ValueError, match=f"{data}.*{other}.*different tokenizers"):
        make_dataset([data, other], global_batch_size=8, masking=None, **ONE_HOST)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_dataset(tmp_path / "nothing", global_batch_size=8, masking=None, **ONE_HOST)
    with pytest.raises(ValueError, match="not divisible"):
        make_dataset(data, global_batch_size=9, masking=None, process_index=0, process_count=2)
    with pytest.raises(ValueError, match="unknown split"):
        make_dataset(data, "test", global_batch_size=8, masking=None, **ONE_HOST)
    with pytest.raises(TypeError, match="MaskingConfig"):
        make_dataset(data, global_batch_size=8, masking={"whole_word": True}, **ONE_HOST)
    with pytest.raises(ValueError, match="process_index"):
        make_dataset(data, global_batch_size=8, masking=None, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="exceeds max_seq_length"):
        make_dataset(data, global_batch_size=8, masking=MaskingConfig(max_predictions_per_seq=65),
                     **ONE_HOST)
    with pytest.raises(ValueError, match="processes"):
        BatchIterator.from_state({**BatchIterator(data, global_batch_size=8, masking=None,
                                                  **ONE_HOST).state(), "process_count": 2})


def test_bench_runs_on_a_data_dir(minilm_dir, capsys):
    bench.main(["--data-dir", prepared(minilm_dir, "nsp"), "--batches", "2", "--batch-size", "8"])
    assert "sequences/s" in capsys.readouterr().out
