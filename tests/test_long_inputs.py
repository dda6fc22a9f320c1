"""Long inputs: sliding windows (cut, pooled, most-central tokens) against plain loops, and a
synthetic task whose only signal word sits past token 512 of ~700-token documents: a tiny
model fine-tuned on windows learns it, the same model truncated cannot, the hierarchical chunk
model learns it too (and ignores empty chunks exactly) and exports a directory that reloads
bit-identically, whose encoder transformers' AutoModel reads and whose pipeline cuts chunks as
training did; the pipelines' window option pools as a hand computation does."""
import json
import shutil

import jax
import numpy as np
import pytest
import tokenizers
import torch
import transformers

import flaxbert
from conftest import set_fields
from flaxbert.tasks import windows as win
from flaxbert.training.finetune import finetune, finetune_config

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
         "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo"]
MARKER = "zebra"
DOC_WORDS = 690  # 7 full windows of 128 (126 words each, 94 new)
WINDOW, STRIDE = 128, 32
MARKER_SHARE = 3  # one word in three of a positive document's tokens 520-690 is the marker


# ----------------------------------------------------------------------------- plain functions

def _loop_spans(n, window, stride):
    spans, start = [], 0
    while True:
        spans.append((start, min(start + window, n)))
        if start + window >= n:
            return spans
        start += window - stride


@pytest.mark.parametrize("n,window,stride", [(0, 4, 1), (3, 4, 1), (4, 4, 0), (20, 6, 2),
                                             (13, 6, 0), (700, 126, 32), (9, 5, 4)])
def test_window_spans_cover_the_text_with_the_stride_overlap(n, window, stride):
    spans = win.window_spans(n, window, stride)
    assert spans == _loop_spans(n, window, stride)
    covered = np.zeros(n, int)
    for (s, e), nxt in zip(spans, spans[1:] + [None]):
        covered[s:e] += 1
        if nxt is not None:
            assert e - nxt[0] == stride
    assert (covered >= 1).all()


def test_window_spans_refuse_bad_settings():
    with pytest.raises(ValueError, match="stride=4 must be an int in"):
        win.window_spans(10, 4, 4)
    with pytest.raises(ValueError, match="window=0"):
        win.window_spans(10, 0, 0)


def _word_level_tokenizer(post):
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{f"w{i}": 4 + i for i in range(60)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single=post, special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tok


@pytest.mark.parametrize("post,layout", [("[CLS] $A [SEP]", (1, 1)),
                                         ("$A [SEP] [CLS]", (0, 2))])
def test_windows_are_the_tokenizers_overflowing_windows(post, layout):
    """Cut from the whole encoding, the windows equal what tokenizers' own truncation with a
    stride returns (transformers' return_overflowing_tokens), for BERT's and XLNet's layouts."""
    tok = _word_level_tokenizer(post)
    assert win.special_layout(tok) == layout
    text = " ".join(f"w{i}" for i in range(47))
    whole = tok.encode(text)
    feature = {"input_ids": np.asarray(whole.ids), "token_type_ids": np.asarray(whole.type_ids),
               "labels": np.int32(1)}
    cut = win.split_into_windows([feature], max_length=10, stride=3, prefix=layout[0],
                                 suffix=layout[1])
    tok.enable_truncation(10, stride=3)
    first = tok.encode(text)
    theirs = [first, *first.overflowing]
    assert [list(w["input_ids"]) for w in cut] == [e.ids for e in theirs]
    assert all(w["labels"] == 1 for w in cut)  # the document's label on every window
    assert list(cut.layout.document) == [0] * len(theirs)
    assert list(cut.layout.start) == [s for s, _ in win.window_spans(47, 10 - sum(layout), 3)]


def test_pooling_equals_loops():
    rs = np.random.RandomState(0)
    document = np.array([0, 0, 0, 1, 2, 2])
    logits = rs.randn(6, 3).astype(np.float32)
    for mode, reduce in (("mean", np.mean), ("max", np.max), ("first", lambda x, axis: x[0])):
        expected = np.stack([reduce(logits[document == d], axis=0) for d in range(3)])
        np.testing.assert_allclose(win.pool_window_logits(logits, document, 3, mode), expected,
                                   rtol=1e-6)
    with pytest.raises(ValueError, match="document 3 has no window"):
        win.pool_window_logits(logits, document, 4, "mean")
    with pytest.raises(ValueError, match="window_pooling='sum'"):
        win.pool_window_logits(logits, document, 3, "sum")


def test_most_central_window_on_hand_cases():
    # 10 content tokens, windows of 6 sharing 2: [0, 6) and [4, 10). Tokens 4 and 5 sit at
    # distances (4->1 in the first, 0 in the second) and (5->0, 1): 4 from the first, 5 from
    # the second.
    layout = win.WindowLayout(np.array([0, 0]), np.array([0, 4]), np.array([6, 6]), 1, 1,
                              np.array([12]))
    assert win.central_windows(layout)[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    # Three windows of 5 sharing 3 over 9 tokens: [0,5) [2,7) [4,9). Token 4 is at distance 0,
    # 2 (the centre of the middle window) and 0; a tie (token 3: 1 and 1) keeps the earlier.
    layout = win.WindowLayout(np.array([0, 0, 0]), np.array([0, 2, 4]), np.array([5, 5, 5]),
                              0, 2, np.array([11]))
    assert win.central_windows(layout)[0].tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 2]


def test_document_token_logits_take_each_token_from_its_central_window():
    rs = np.random.RandomState(1)
    prefix, suffix = 1, 1
    docs = [rs.randint(4, 40, 2 + n) for n in (23, 5, 40)]
    features = [{"input_ids": d, "token_type_ids": np.zeros_like(d)} for d in docs]
    cut = win.split_into_windows(features, max_length=10, stride=4, prefix=prefix, suffix=suffix)
    layout = cut.layout
    window_logits = [rs.randn(len(w["input_ids"]), 3).astype(np.float32) for w in cut]
    got = win.document_token_logits(window_logits, layout)
    for d, doc in enumerate(docs):
        expected = np.zeros((len(doc), 3), np.float32)
        mine = [w for w in range(len(cut)) if layout.document[w] == d]
        expected[:prefix] = window_logits[mine[0]][:prefix]
        expected[len(doc) - suffix:] = window_logits[mine[-1]][-suffix:]
        for t in range(len(doc) - prefix - suffix):  # content token t: best window by a loop
            best, margin = None, -1
            for w in mine:
                s, n = layout.start[w], layout.length[w]
                if s <= t < s + n and min(t - s, s + n - 1 - t) > margin:
                    best, margin = w, min(t - s, s + n - 1 - t)
            expected[prefix + t] = window_logits[best][prefix + t - layout.start[best]]
            assert cut[best]["input_ids"][prefix + t - layout.start[best]] == doc[prefix + t]
        np.testing.assert_array_equal(got[d], expected)


# ----------------------------------------------------------------------------- fine-tuning

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random BERT (128 positions) with a WordPiece tokenizer in which every word of
    the task is one token."""
    from flaxbert.tokenizer_training import train_tokenizer
    root = tmp_path_factory.mktemp("long")
    rs = np.random.RandomState(0)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rs.choice(WORDS + [MARKER], 8)) for _ in range(200)))
    train_tokenizer([corpus], root / "tok", "wordpiece", 200, min_frequency=1)
    tokenizer = transformers.AutoTokenizer.from_pretrained(root / "tok")
    assert all(len(tokenizer.tokenize(w)) == 1 for w in WORDS + [MARKER])
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=WINDOW, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0))
    model.save_pretrained(root / "model")
    for f in (root / "tok").iterdir():
        shutil.copy(f, root / "model" / f.name)
    return root / "model"


def _documents(rs, n):
    """Balanced: in half the documents, one word in MARKER_SHARE of tokens 520-690 is MARKER;
    the first 512 tokens of every document are drawn alike."""
    rows = []
    for i in range(n):
        words = list(rs.choice(WORDS, DOC_WORDS))
        has = i % 2 == 0
        if has:
            for at in rs.choice(np.arange(520, DOC_WORDS), (DOC_WORDS - 520) // MARKER_SHARE,
                                replace=False):
                words[at] = MARKER
        rows.append({"sentence": " ".join(words), "label": "yes" if has else "no"})
    return [rows[i] for i in rs.permutation(n)]


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("long_data")
    rs = np.random.RandomState(1)
    for split, n in (("train", 160), ("dev", 64)):
        (root / f"{split}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in _documents(rs, n)))
    return root


def _config(model, root, **fields):
    c = finetune_config(model=str(model))
    c.data.train, c.data.validation = str(root / "train.jsonl"), str(root / "dev.jsonl")
    c.task.max_seq_length, c.task.stride = WINDOW, STRIDE
    c.train.num_steps, c.train.global_batch_size, c.train.log_every = 150, 32, 50
    c.train.eval_every, c.train.progress_bar = 0, False
    c.optimizer.learning_rate, c.optimizer.warmup_steps = 3e-3, 10
    c.checkpoint.save_every, c.checkpoint.async_save = 1000, False
    c.export.at_end = False
    return set_fields(c, **fields)


@pytest.fixture(scope="module")
def windows_run(checkpoint, task_files, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("windows_run")
    last = finetune(_config(checkpoint, task_files, **{
        "task.long_inputs": "windows", "task.window_pooling": "max", "train.num_steps": 100,
        "train.best_metric": "eval_accuracy"}), workdir)
    return workdir, last


def test_windows_learn_a_signal_past_token_512_that_truncation_cannot_see(
        windows_run, checkpoint, task_files, tmp_path):
    workdir, last = windows_run
    assert last["eval_accuracy"] >= 0.9, last  # 1.0 in runs here (from step 60 on)
    # 64 documents of 7 windows (690 words + 2 specials), each document scored once.
    assert last["eval_sequences"] == 64 * 7
    truncated = finetune(_config(checkpoint, task_files, **{"train.num_steps": 20}),
                         tmp_path / "truncate")
    assert truncated["eval_sequences"] == 64
    assert truncated["eval_accuracy"] <= 0.65, truncated  # balanced dev set: chance is 0.5


def test_text_classification_pipeline_pools_its_windows(windows_run, task_files):
    from flaxbert.pipelines import pipeline
    best = windows_run[0] / "export" / "best"
    pipe = pipeline("text-classification", best, max_length=WINDOW, stride=STRIDE,
                    window_pooling="max", top_k=None, function_to_apply="none")
    dev = [json.loads(ln) for ln in (task_files / "dev.jsonl").read_text().splitlines()][:12]
    texts = [r["sentence"] for r in dev]
    results = pipe(texts)

    # By hand: transformers' tokenizer cuts the same windows; the model runs each; max-pool.
    tokenizer = transformers.AutoTokenizer.from_pretrained(best)
    enc = tokenizer(texts, truncation=True, max_length=WINDOW, stride=STRIDE,
                    return_overflowing_tokens=True, padding=True, return_tensors="np")
    model, params = flaxbert.from_pretrained(best)
    window_logits = np.asarray(model.apply({"params": params}, enc["input_ids"],
                                           enc["attention_mask"], enc["token_type_ids"]).logits)
    owner = np.asarray(enc["overflow_to_sample_mapping"])
    names = model.config.id2label
    for d, result in enumerate(results):
        pooled = window_logits[owner == d].max(0)
        got = {r["label"]: r["score"] for r in result}
        np.testing.assert_allclose([got[n] for n in names], pooled, atol=1e-5)
    accuracy = np.mean([r[0]["label"] == row["label"] for r, row in zip(results, dev)])
    assert accuracy >= 0.8
    # Mean pooling through the same call option, and pairs are refused by name.
    mean = pipe(texts[:2], window_pooling="mean")
    for d, result in enumerate(mean):
        got = {r["label"]: r["score"] for r in result}
        np.testing.assert_allclose([got[n] for n in names], window_logits[owner == d].mean(0),
                                   atol=1e-5)
    with pytest.raises(ValueError, match=r"inputs\[0\] is a text pair"):
        pipe({"text": "alpha", "text_pair": "bravo"})


def test_token_pipeline_with_stride_equals_the_central_windows(windows_run, tmp_path):
    """A token-classification head on the same encoder: the stride option's per-token scores
    are each token's most central window's, and a short text gives what truncation gives."""
    from flaxbert.pipelines import pipeline
    best = windows_run[0] / "export" / "best"
    model, params = flaxbert.from_pretrained(best, task="token-classification")
    params = jax.tree_util.tree_map(np.asarray, params)
    rs = np.random.RandomState(3)
    params["token_classifier"]["dense"]["kernel"] = rs.randn(
        *params["token_classifier"]["dense"]["kernel"].shape).astype(np.float32)
    flaxbert.save_pretrained(tmp_path / "ner", model, params, format="hf",
                             extra_files=[f for f in best.iterdir() if "token" in f.name
                                          or f.name == "vocab.txt"])
    pipe = pipeline("token-classification", tmp_path / "ner", max_length=32, stride=8,
                    ignore_labels=())
    text = " ".join(rs.choice(WORDS, 90))
    got = pipe(text)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "ner")
    enc = tokenizer(text, truncation=True, max_length=32, stride=8,
                    return_overflowing_tokens=True, padding=True, return_tensors="np")
    logits = np.asarray(model.apply({"params": params}, enc["input_ids"],
                                    enc["attention_mask"]).logits)
    spans = win.window_spans(90, 30, 8)
    layout = win.WindowLayout(np.zeros(len(spans), int), np.array([s for s, _ in spans]),
                              np.array([e - s for s, e in spans]), 1, 1, np.array([92]))
    per_window = [logits[w][:enc["attention_mask"][w].sum()] for w in range(len(spans))]
    expected = win.document_token_logits(per_window, layout)[0][1:-1]  # words, not specials
    scores = np.exp(expected) / np.exp(expected).sum(-1, keepdims=True)
    assert len(got) == 90
    np.testing.assert_allclose([e["score"] for e in got], scores.max(-1), rtol=1e-5)
    assert [e["entity"] for e in got] == [model.config.id2label[i] for i in scores.argmax(-1)]
    short = " ".join(WORDS[:10])
    assert pipe(short) == pipe(short, stride=None)


@pytest.mark.slow  # another fine-tuning run (~40 s here); the unit tests cover the assembly
def test_token_classification_fine_tunes_on_windows(checkpoint, tmp_path):
    """Token labels survive the cut: each window trains on its own tokens' labels, and the
    evaluation scores every word of a document once, from its most central window."""
    rs = np.random.RandomState(4)
    for split, n in (("train", 24), ("dev", 8)):
        rows = []
        for _ in range(n):
            words = list(rs.choice(WORDS + [MARKER], 300))
            rows.append({"tokens": words, "ner_tags": ["B-Z" if w == MARKER else "O"
                                                       for w in words]})
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    last = finetune(_config(checkpoint, tmp_path, **{
        "objective": "token_classification", "task.long_inputs": "windows",
        "train.num_steps": 60}), tmp_path / "run")
    assert last["eval_sequences"] == 8 * 3  # 300 words + 2 specials: 3 windows of 128
    assert last["eval_f1"] >= 0.9, last


CHUNK_LENGTH, MAX_CHUNKS, CHUNK_STEPS = 32, 8, 60


def _chunk_config(checkpoint, root, **fields):
    return _config(checkpoint, root, **{
        "task.long_inputs": "chunks", "task.max_seq_length": CHUNK_LENGTH,
        "task.max_chunks": MAX_CHUNKS, "task.stride": 0, "train.num_steps": CHUNK_STEPS,
        "train.global_batch_size": 16, **fields})


@pytest.fixture(scope="module")
def chunk_run(checkpoint, tmp_path_factory):
    """A cheaper task of the same kind: 200-word documents in chunks of 32 tokens (7 chunks),
    the marker only in the last 20 words of the positive ones (half of them). Evaluated every
    30 steps with a checkpoint each time, keeping the best model and exporting at the end."""
    root = tmp_path_factory.mktemp("chunks")
    rs = np.random.RandomState(7)
    for split, n in (("train", 160), ("dev", 64)):
        rows = []
        for i in rs.permutation(n):
            words = list(rs.choice(WORDS, 200))
            if i % 2 == 0:
                for at in rs.choice(np.arange(180, 200), 10, replace=False):
                    words[at] = MARKER
            rows.append({"sentence": " ".join(words), "label": "yes" if i % 2 == 0 else "no"})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    last = finetune(_chunk_config(checkpoint, root, **{
        "train.eval_every": 30, "checkpoint.save_every": 30, "checkpoint.keep": None,
        "train.best_metric": "eval_accuracy", "export.at_end": True}), root / "run")
    return root, last


def _best_step(workdir):
    """The step train.best_metric kept: the first with the highest eval_accuracy."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["eval_accuracy"], -r["step"]) for r in rows if "eval_accuracy" in r]
    return -max(evals)[1]


def test_chunk_model_learns_the_late_signal_and_ignores_empty_chunks(chunk_run):
    from flaxbert.training.trainer import restore_params
    root, last = chunk_run
    assert last["eval_sequences"] == 64  # one row per document
    assert last["eval_accuracy"] >= 0.9, last
    trainer, _, params = restore_params(root / "run")
    model = trainer.objective.model
    assert type(model).__name__ == "HierarchicalClassifier" and model.max_chunks == MAX_CHUNKS
    # An empty chunk (all-zero attention mask) changes no logit; shapes (batch, chunks, length).
    ids = np.random.RandomState(5).randint(5, 50, (2, 3, 16))
    mask = np.ones_like(ids)
    mask[1, 2] = 0  # the second document has two chunks
    padded = [np.concatenate([x, np.zeros((2, 1, 16), x.dtype)], 1) for x in (ids, mask)]
    apply = jax.jit(lambda ids, mask: model.apply({"params": params}, ids, mask).logits)
    a = np.asarray(apply(ids, mask))
    b = np.asarray(apply(*padded))
    c2 = np.asarray(apply(ids[1:, :2], mask[1:, :2]))
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a[1:], c2, atol=1e-6)


def _chunk_inputs(seed=8):
    ids = np.random.RandomState(seed).randint(5, 50, (3, MAX_CHUNKS, CHUNK_LENGTH))
    mask = np.ones_like(ids)
    mask[0, 5:] = 0  # a five-chunk document
    mask[1, 2, 20:] = 0  # a short last chunk
    return ids, mask


def test_chunk_exports_reload_with_identical_logits(chunk_run, tmp_path):
    """export/best holds the best evaluation's weights and export/step_60 the last ones: each
    reloads (HierarchicalClassifier.from_pretrained) with logits bit-identical to that step's
    checkpoint; an existing destination is refused without overwrite."""
    from flaxbert.models.hierarchical import CHUNK_CONFIG, CHUNK_HEAD, HierarchicalClassifier
    from flaxbert.training.checkpoint import Checkpoints
    from flaxbert.training.trainer import restore_params
    root, _ = chunk_run
    workdir = root / "run"
    ids, mask = _chunk_inputs()
    trainer, last_step, _ = restore_params(workdir)
    trained = trainer.objective.model
    assert last_step == CHUNK_STEPS
    checkpoints = Checkpoints(workdir / "checkpoints", save_every=1, keep=None, async_save=False)
    try:
        logits = {step: np.asarray(trained.apply(
            {"params": checkpoints.restore(step, trainer.abstract_state())[0].params}, ids,
            mask).logits) for step in checkpoints.steps()}
    finally:
        checkpoints.close()
    assert sorted(logits) == [30, CHUNK_STEPS]
    assert np.abs(logits[30] - logits[CHUNK_STEPS]).max() > 0  # the comparison below can fail
    for export, step in (("best", _best_step(workdir)), (f"step_{CHUNK_STEPS}", CHUNK_STEPS)):
        directory = workdir / "export" / export
        assert {"config.json", "model.safetensors", "vocab.txt", CHUNK_HEAD,
                CHUNK_CONFIG} <= {f.name for f in directory.iterdir()}
        model, loaded = HierarchicalClassifier.from_pretrained(directory)
        assert (model.max_chunks, model.chunk_pooling, model.cls_position, model.chunk_length,
                model.stride) == (MAX_CHUNKS, "attention", "first", CHUNK_LENGTH, 0)
        assert model.config.id2label == trained.config.id2label == ("no", "yes")
        ours = np.asarray(model.apply({"params": loaded}, ids, mask).logits)
        np.testing.assert_array_equal(ours, logits[step])
    saved = json.loads((workdir / "export" / "best" / CHUNK_CONFIG).read_text())
    assert saved["id2label"] == {"0": "no", "1": "yes"} and saved["chunk_length"] == CHUNK_LENGTH
    with pytest.raises(FileExistsError, match="already exists"):
        trainer.export(loaded, workdir / "export" / "best")
    with pytest.raises(FileExistsError, match="already exists"):
        model.save_pretrained(workdir / "export" / "best", loaded)
    trainer.export(loaded, tmp_path / "again")  # a fresh place is written (`flaxbert export`)
    again, again_params = HierarchicalClassifier.from_pretrained(tmp_path / "again")
    np.testing.assert_array_equal(
        np.asarray(again.apply({"params": again_params}, ids, mask).logits), ours)


def test_chunk_export_encoder_is_a_transformers_base_model(chunk_run):
    from flaxbert.models.hierarchical import HierarchicalClassifier
    best = chunk_run[0] / "run" / "export" / "best"
    model, params = HierarchicalClassifier.from_pretrained(best)
    ids, mask = _chunk_inputs(9)
    ids, mask = ids.reshape(-1, CHUNK_LENGTH), mask.reshape(-1, CHUNK_LENGTH)
    ours = model.encoder_model().apply({"params": params["encoder"]}, ids, mask).last_hidden_state
    torch_model = transformers.AutoModel.from_pretrained(best).eval()
    assert type(torch_model).__name__ == "BertModel"
    with torch.no_grad():
        theirs = torch_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(ours)[real], theirs.last_hidden_state.numpy()[real],
                               atol=1e-5)


def test_pipeline_on_a_chunk_export_equals_the_training_chunks(chunk_run, checkpoint, caplog):
    """The text-classification pipeline on export/best: each dev document's scores equal the
    reloaded model applied to the chunks fine-tuning's evaluation cut (TaskData's batches)."""
    from flaxbert.models.hierarchical import HierarchicalClassifier
    from flaxbert.pipelines import pipeline
    from flaxbert.training.sources import TaskData
    root, _ = chunk_run
    best = root / "run" / "export" / "best"
    model, params = HierarchicalClassifier.from_pretrained(best)
    apply = jax.jit(lambda ids, mask, types: model.apply({"params": params}, ids, mask,
                                                         types).logits)
    data = TaskData(_chunk_config(checkpoint, root))
    (_, batches), = data.eval_passes()
    expected = {}
    for batch in batches:
        logits = np.asarray(apply(batch["input_ids"], batch["attention_mask"],
                                  batch["token_type_ids"]))
        expected.update((int(i), row) for i, row in zip(batch["example_index"], logits) if i >= 0)
    dev = [json.loads(ln) for ln in (root / "dev.jsonl").read_text().splitlines()]
    pipe = pipeline("text-classification", best, top_k=None, function_to_apply="none")
    results = pipe([r["sentence"] for r in dev])
    assert len(expected) == len(results) == 64
    for d, result in enumerate(results):
        got = {r["label"]: r["score"] for r in result}
        np.testing.assert_allclose([got["no"], got["yes"]], expected[d], atol=1e-5)
    accuracy = np.mean([r[0]["label"] == row["label"] for r, row in zip(results, dev)])
    assert accuracy >= 0.9
    # transformers' output shape for one text, and a document past max_chunks keeps its first
    # max_chunks chunks (30 words each here), as training kept them, with a warning.
    one = pipe(dev[0]["sentence"], top_k="", function_to_apply="softmax")
    assert len(one) == 1 and one[0]["label"] == results[0][0]["label"]
    long_text = " ".join(WORDS[i % len(WORDS)] for i in range(400))
    with caplog.at_level("WARNING"):
        cut = pipe(long_text)
    assert "more than the model's max_chunks=8" in caplog.text
    assert cut == pipe(" ".join(long_text.split()[:MAX_CHUNKS * (CHUNK_LENGTH - 2)]))
    with pytest.raises(ValueError, match=r"inputs\[0\] is a text pair; chunk models"):
        pipe({"text": "alpha", "text_pair": "bravo"})


def test_chunk_config_fields_are_checked(tmp_path):
    from flaxbert.models.hierarchical import CHUNK_CONFIG, FORMAT, read_chunk_config
    good = {"format": FORMAT, "max_chunks": 4, "chunk_pooling": "attention",
            "cls_position": "first", "chunk_length": 64, "stride": 8}
    (tmp_path / CHUNK_CONFIG).write_text(json.dumps(good))
    assert read_chunk_config(tmp_path) == {k: v for k, v in good.items() if k != "format"}
    (tmp_path / CHUNK_CONFIG).write_text(json.dumps({**good, "chunk_pooling": "sum"}))
    with pytest.raises(ValueError, match=r"chunk_config.json: field 'chunk_pooling' is"):
        read_chunk_config(tmp_path)
    (tmp_path / CHUNK_CONFIG).write_text(json.dumps({**good, "max_chunks": True}))
    with pytest.raises(ValueError, match=r"field 'max_chunks'"):
        read_chunk_config(tmp_path)


def test_chunk_transformer_pooling_masks_missing_chunks_exactly():
    """The one-layer pooling transformer over chunk embeddings: a missing chunk (present=0),
    whatever its embedding, changes no logit, appended or in place; a present chunk does."""
    from flaxbert.models.hierarchical import ChunkHead, HierarchicalClassifier
    config = flaxbert.get_config("bert-tiny", hidden_size=32, num_attention_heads=4,
                                 intermediate_size=64, num_labels=3)
    head = ChunkHead(config, max_chunks=5, chunk_pooling="transformer")
    rs = np.random.RandomState(6)
    chunks = rs.randn(2, 4, 32).astype(np.float32)
    present = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
    params = jax.jit(head.init)(jax.random.PRNGKey(1), chunks, present)
    apply = jax.jit(head.apply)
    a = np.asarray(apply(params, chunks, present))
    more = np.concatenate([chunks, rs.randn(2, 1, 32).astype(np.float32)], 1)
    np.testing.assert_allclose(a, apply(params, more, np.pad(present, ((0, 0), (0, 1)))),
                               atol=1e-6)
    changed = chunks.copy()
    changed[0, 3] += 5.0  # the missing chunk's embedding does not matter
    np.testing.assert_allclose(a, apply(params, changed, present), atol=1e-6)
    changed[0, 1] += 5.0  # a present chunk's does
    assert np.abs(a[0] - np.asarray(apply(params, changed, present))[0]).max() > 1e-4
    with pytest.raises(ValueError, match="chunk_pooling='sum'"):
        HierarchicalClassifier(config, chunk_pooling="sum")


def test_long_input_settings_are_checked(checkpoint, task_files, tmp_path):
    with pytest.raises(ValueError, match="task.long_inputs='window'; choose one of"):
        finetune(_config(checkpoint, task_files, **{"task.long_inputs": "window"}), tmp_path / "a")
    with pytest.raises(ValueError, match="does not apply to objective 'token_classification'"):
        finetune(_config(checkpoint, task_files, **{"task.long_inputs": "chunks",
                                                    "objective": "token_classification"}),
                 tmp_path / "b")
    with pytest.raises(ValueError, match="window_pooling='sum'"):
        finetune(_config(checkpoint, task_files, **{"task.long_inputs": "windows",
                                                    "task.window_pooling": "sum"}), tmp_path / "c")
