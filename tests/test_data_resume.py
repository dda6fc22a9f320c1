"""flaxbert.data.pipeline's seekable stream and its evaluation pass: resuming at batch N gives
the uninterrupted stream's batches N, N+1, ... (across epochs, with several hosts, by file and
by record) without opening the shards before N; evaluation reads every validation record
once, in order, padded to as many full batches on every host."""
import collections
import json
import shutil

import numpy as np
import pytest

from data_cases import prepared, read_records
from flaxbert.data.masking import MaskingConfig
from flaxbert.data.pipeline import BatchIterator, make_eval_dataset

EPOCH = 76  # batches of 8 in the 611 training records below


@pytest.fixture(scope="module")
def data(minilm_dir):
    """32 training shards of ~19 records (so a resume has whole shards to skip), 2 validation."""
    return prepared(minilm_dir, "nsp", num_shards=32, validation_fraction=0.1)


def _rows(batch):
    return [tuple(ids[mask > 0]) for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]


def _file_rows(path):
    import tensorflow as tf
    return {tuple(tf.train.Example.FromString(raw).features.feature["input_ids"].int64_list.value)
            for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator()}


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("split,hosts,batch,epoch", [
    ("train", 1, 8, EPOCH), ("train", 2, 8, EPOCH),
    ("validation", 3, 6, 9)])  # 2 files of 28 records for 3 hosts: by record, 18-19 records each
def test_resuming_at_n_continues_the_uninterrupted_stream(data, split, hosts, batch, epoch):
    kwargs = dict(split=split, global_batch_size=batch, seed=3, process_count=hosts,
                  masking=MaskingConfig(whole_word=True) if hosts == 1 else None)
    for host in range(hosts):
        it = BatchIterator(data, **kwargs, process_index=host)
        stream = [next(it) for _ in range(2 * epoch + 8)]
        assert not _same(stream[0], stream[epoch])  # epochs are reshuffled
        for n in (1, 5, epoch - 1, epoch, epoch + 3, 2 * epoch + 3):
            state = json.loads(json.dumps({**it.state(), "next_batch": n}))
            resumed = BatchIterator.from_state(state, process_index=host)
            for want in stream[n:n + 3]:
                assert _same(next(resumed), want)


def test_a_resume_opens_only_the_shards_it_reads(data, tmp_path):
    """The shards a resumed run does not need are deleted: opening any of them would fail."""
    kwargs = dict(global_batch_size=8, masking=None, seed=1, process_index=0, process_count=1)
    it = BatchIterator(data, **kwargs)
    n, k = EPOCH + 30, 2  # in the second epoch
    stream = [next(it) for _ in range(n + k)]
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    shards = sorted(copy.glob("train-*.tfrecord"))
    needed = {row for b in stream[n:] for row in _rows(b)}
    kept = [p for p in shards if needed & _file_rows(p)]
    for path in set(shards) - set(kept):
        path.unlink()
    assert len(kept) <= 3  # k batches of 8 span at most 3 shards of ~19 records
    resumed = BatchIterator(copy, **kwargs, start_batch=n)
    assert all(_same(next(resumed), want) for want in stream[n:])


@pytest.mark.parametrize("hosts", [1, 2, 3])  # 2 validation shards: by file for 1-2, by record for 3
def test_evaluation_reads_every_record_once_in_full_batches(data, hosts):
    records = [tuple(r["input_ids"]) for r in read_records(data, "validation")]
    global_batch = 6 * hosts if hosts == 3 else 16
    seen, lengths = [], set()
    for host in range(hosts):
        ds = make_eval_dataset(data, global_batch_size=global_batch, masking=MaskingConfig(),
                               seed=0, process_index=host, process_count=hosts)
        batches = list(ds.as_numpy_iterator())
        assert len(batches) == len(ds)
        lengths.add(len(batches))
        for b in batches:
            assert b["input_ids"].shape[0] == global_batch // hosts
            assert b["example_weights"].dtype == np.float32
            pad = b["example_weights"] == 0
            assert not b["masked_weights"][pad].any() and (b["attention_mask"][pad].sum(1) == 1).all()
            unmasked = b["input_ids"].copy()
            rows = np.arange(len(unmasked))[:, None]
            unmasked[rows, b["masked_positions"]] = np.where(
                b["masked_weights"] > 0, b["masked_ids"], unmasked[rows, b["masked_positions"]])
            seen.extend(row for row, p in zip(_rows(dict(b, input_ids=unmasked)), pad) if not p)
        if hosts == 1:
            assert seen == records  # in order
    assert len(lengths) == 1  # every host steps the same number of times
    assert collections.Counter(seen) == collections.Counter(records)
    if hosts > 1:  # some host had to pad
        assert lengths.pop() * global_batch > len(records)


def test_evaluation_iterator_and_empty_split(data, minilm_dir):
    it = BatchIterator(data, "validation", global_batch_size=16, masking=None, evaluation=True,
                       process_index=0, process_count=1)
    batches = list(it)
    records = len(read_records(data, "validation"))
    assert len(batches) == -(-records // 16) >= 2  # one pass, the last batch padded
    assert sum(b["example_weights"].sum() for b in batches) == records
    assert it.state()["evaluation"] and it.state()["next_batch"] == len(batches)
    again = BatchIterator.from_state({**it.state(), "next_batch": len(batches) - 1},
                                     process_index=0)
    assert _same(next(again), batches[-1])
    empty = prepared(minilm_dir, "nsp", num_shards=32, validation_fraction=0.0)
    with pytest.raises(ValueError, match=f"{empty} has no validation sequences"):
        make_eval_dataset(empty, global_batch_size=8, masking=None, process_index=0,
                          process_count=1)
