"""flaxbert.pipelines against transformers.pipeline on the same directories: tiny random BERT
heads with a small WordPiece vocabulary, a byte-level BPE RoBERTa, and the real MiniLM weights
(its backbone under random heads); compiles per bucket; bad input."""
import contextlib
import functools

import numpy as np
import pytest

import flaxbert
from flaxbert.pipelines import pipeline

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

WORDS = ("the a cat dog sat on mat went to and is in of john smith paris london new york "
         "lives works at acme bank river").split()
PIECES = ["##s", "##son", "##ing", "##ed", "##er", "lon", "##don", "par", "##is", "jo", "##hn"]
VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "'"] + WORDS + PIECES
         + list("abcdefghijklmnopqrstuvwxyz") + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"])
TEXTS = ["john smith went to paris.", "Johnson lives in New York, and works at acme bank",
         "the cats sat on the mat", "jo's dog ☃ went to the river of londoning",
         "a", "parisers and londoners " * 3]
NER_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC", 5: "ORG"}


def hf_config(**fields):
    return transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=37,
                                   max_position_embeddings=64, initializer_range=0.3, **fields)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    vocab = tmp_path_factory.mktemp("vocab")
    (vocab / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (vocab / "tokenizer_config.json").write_text('{"model_max_length": 64, "do_lower_case": true}')
    out = tmp_path_factory.mktemp("tokenizer") / "tok"
    flaxbert.Tokenizer.from_pretrained(vocab).save_pretrained(out)
    return out


def save_hf(model, tokenizer_dir, directory):
    model.save_pretrained(directory)
    transformers.AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def make_dir(tmp_path_factory, tokenizer_dir):
    def make(cls, seed=0, **fields):
        torch.manual_seed(seed)
        model = getattr(transformers, cls)(hf_config(**fields)).eval()
        return save_hf(model, tokenizer_dir, tmp_path_factory.mktemp(cls))
    return make


@functools.cache
def hf_pipeline(task, directory):
    return transformers.pipeline(task, model=directory, device="cpu")


def reference(task, directory, inputs, **kwargs):
    return hf_pipeline(task, str(directory))(inputs, **kwargs)


def assert_same(ours, theirs, path="output"):
    """Same structure, keys, labels, words and offsets; scores within 1e-4."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and list(ours) == list(theirs), (path, ours, theirs)
        for key in theirs:
            assert_same(ours[key], theirs[key], f"{path}[{key!r}]")
    elif isinstance(theirs, (list, tuple)):
        assert isinstance(ours, (list, tuple)) and len(ours) == len(theirs), (path, ours, theirs)
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, f"{path}[{i}]")
    elif isinstance(theirs, (float, np.floating)):
        assert abs(float(ours) - float(theirs)) <= 1e-4, (path, ours, theirs)
    else:
        assert ours == theirs and type(ours) is type(theirs), (path, ours, theirs)


@pytest.fixture(scope="module")
def ner_dir(make_dir):
    return make_dir("BertForTokenClassification", id2label=NER_LABELS)


@pytest.fixture(scope="module")
def ner_pipe(ner_dir):
    return pipeline("ner", ner_dir, buckets=(16, 32, 64), batch_size=4)


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_token_classification_equals_transformers(ner_dir, ner_pipe, strategy):
    expected = reference("token-classification", ner_dir, TEXTS, aggregation_strategy=strategy,
                         ignore_labels=[])
    got = ner_pipe(TEXTS, aggregation_strategy=strategy, ignore_labels=[])
    assert_same(got, expected)
    assert len({e.get("entity", e.get("entity_group")) for row in got for e in row}) >= 3
    for text, row in zip(TEXTS, got):  # offsets point into the text
        for e in row:
            assert 0 <= e["start"] < e["end"] <= len(text)
    # default ignore_labels=["O"], one text in, one list out
    assert_same(ner_pipe(TEXTS[1], aggregation_strategy=strategy),
                reference("token-classification", ner_dir, TEXTS[1],
                          aggregation_strategy=strategy))


def test_a_stream_compiles_once_per_bucket(ner_dir):
    pipe = pipeline("ner", ner_dir, buckets=(16, 32, 64), batch_size=4)
    assert {pipe.engine.bucket_for(len(e.ids)) for e in pipe.encode(TEXTS)} == {16, 32}
    pipe(TEXTS * 3)
    assert pipe.compilations["token-classification"] == 2
    pipe(list(reversed(TEXTS)) + ["london"] * 5)  # new mix and batch counts, same buckets
    assert pipe.compilations["token-classification"] == 2


def test_fill_mask_equals_transformers(make_dir):
    directory = make_dir("BertForMaskedLM")
    fill = pipeline("fill-mask", directory, buckets=(16, 64))
    texts = ["john [MASK] went to paris.", "the [MASK] sat on the [MASK] in london", "[MASK]"]
    for inputs, kwargs in [(texts, {}), (texts[0], {"top_k": 3}), (texts[1:2], {"top_k": 2}),
                           (texts, {"targets": ["cat", "dog", "paris", "cats"]})]:
        assert_same(fill(inputs, **kwargs), reference("fill-mask", directory, inputs, **kwargs))
    with pytest.raises(ValueError, match=r"inputs\[1\] has no mask token"):
        fill(["[MASK] a", "no mask here"])


def test_fill_mask_reads_a_pretraining_checkpoint_as_transformers_does(make_dir):
    """An MLM + NSP export (BertForPreTraining, what `make demo` writes) fills masks with its MLM
    half, as transformers' fill-mask pipeline accepts it."""
    directory = make_dir("BertForPreTraining")
    fill = pipeline("fill-mask", directory, buckets=(16,))
    assert fill.model.task == "masked-lm"
    texts = ["john [MASK] went to paris.", "the [MASK] sat on the mat"]
    assert_same(fill(texts), reference("fill-mask", directory, texts))


@pytest.mark.parametrize("fields", [dict(num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"}),
                                    dict(num_labels=1),
                                    dict(num_labels=2, problem_type="multi_label_classification"),
                                    dict(num_labels=1, problem_type="regression")],
                         ids=["softmax", "one-label-sigmoid", "multi-label", "regression"])
def test_text_classification_equals_transformers(make_dir, fields):
    directory = make_dir("BertForSequenceClassification", **fields)
    classify = pipeline("text-classification", directory, buckets=(32, 64))
    pair = {"text": "john went to paris", "text_pair": "he lives in london"}
    for inputs, kwargs in [(TEXTS, {}), (TEXTS[0], {}), (pair, {}), ([pair, TEXTS[1]], {}),
                           (TEXTS[:2], {"top_k": None}), (TEXTS[2], {"top_k": 2}),
                           (TEXTS[:2], {"function_to_apply": "none"})]:
        assert_same(classify(inputs, **kwargs),
                    reference("text-classification", directory, inputs, **kwargs))


def test_multiple_choice_equals_softmaxed_transformers_logits(make_dir, tokenizer_dir):
    directory = make_dir("BertForMultipleChoice")
    choose = pipeline("multiple-choice", directory, buckets=(16, 32))
    questions = [{"text": "john went to", "choices": ["paris", "the river of london", "a bank"]},
                 {"text": "the cat sat on", "choices": ["the mat", "new york"]}]
    got = choose(questions)
    tok = transformers.AutoTokenizer.from_pretrained(directory)
    model = transformers.AutoModelForMultipleChoice.from_pretrained(directory).eval()
    for q, result in zip(questions, got):
        enc = tok([q["text"]] * len(q["choices"]), q["choices"], padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**{k: v[None] for k, v in enc.items()}).logits[0]
        expected = torch.softmax(logits, -1).numpy()
        assert sorted(r["index"] for r in result) == list(range(len(q["choices"])))
        np.testing.assert_allclose([r["score"] for r in sorted(result, key=lambda r: r["index"])],
                                   expected, atol=1e-5)
        assert result[0]["choice"] == q["choices"][int(expected.argmax())]
    assert_same(choose(questions[1]), got[1])


def test_roberta_bpe_token_classification_equals_transformers(tmp_path):
    from flaxbert.tokenizer_training import train_tokenizer
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS * 20))
    train_tokenizer([corpus], tmp_path / "bpe", "bpe", 300, min_frequency=1)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "bpe")
    torch.manual_seed(1)
    config = transformers.RobertaConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=66, initializer_range=0.3,
        id2label=NER_LABELS, pad_token_id=tok.pad_token_id)
    model = transformers.RobertaForTokenClassification(config).eval()
    directory = save_hf(model, tmp_path / "bpe", tmp_path / "roberta")
    ours = pipeline("token-classification", directory, buckets=(32, 64))
    for strategy in ("none", "simple", "max"):
        with pytest.warns(UserWarning) if strategy == "max" else contextlib.nullcontext():
            got = ours(TEXTS, aggregation_strategy=strategy, ignore_labels=[])
        assert_same(got, reference("token-classification", directory, TEXTS,
                                   aggregation_strategy=strategy, ignore_labels=[]))


def test_feature_extraction_and_embeddings_on_minilm(minilm_dir):
    texts = ["A man is eating food.", "Someone in a gorilla costume is playing a set of drums.",
             "東京は日本の首都です。"]
    features = pipeline("feature-extraction", minilm_dir, buckets=(16, 32), batch_size=2)
    expected = reference("feature-extraction", minilm_dir, texts)
    got = features(texts)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-4)
    one = features(texts[0], return_tensors=True)
    assert one.shape == np.array(expected[0]).shape and one.dtype == np.float32
    embed = pipeline("sentence-embedding", minilm_dir, buckets=(16, 32), batch_size=2)
    mean = [np.array(h)[0].mean(0) for h in expected]  # MiniLM: mean pooling, then L2
    np.testing.assert_allclose(embed(texts), [m / np.linalg.norm(m) for m in mean], atol=1e-5)
    assert embed(texts[0]).shape == (384,)


def test_minilm_backbone_under_random_heads(minilm_dir, tmp_path):
    text = ["Paris is the capital of France.", "John Smith works at the Bank of England."]
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    torch.manual_seed(0)
    ner = transformers.BertForTokenClassification.from_pretrained(
        minilm_dir, id2label=NER_LABELS).eval()
    ner_dir = tmp_path / "ner"
    ner.save_pretrained(ner_dir)
    tok.save_pretrained(ner_dir)
    for strategy in ("none", "first"):
        assert_same(pipeline("ner", ner_dir)(text, aggregation_strategy=strategy, ignore_labels=[]),
                    reference("ner", ner_dir, text, aggregation_strategy=strategy,
                              ignore_labels=[]))


def test_bad_input(ner_dir, ner_pipe, make_dir):
    with pytest.raises(ValueError, match="task 'fill_mask'. Did you mean 'fill-mask'"):
        pipeline("fill_mask", ner_dir)
    with pytest.raises(ValueError, match=r"head is 'token-classification'.*'fill-mask' pipeline "
                                         r"needs 'masked-lm'"):
        pipeline("fill-mask", ner_dir)
    with pytest.raises(ValueError, match="empty list"):
        ner_pipe([])
    with pytest.raises(TypeError, match=r"inputs\[1\] is int, expected a text"):
        ner_pipe(["fine", 3])
    with pytest.raises(TypeError, match="no option 'top_k'"):
        ner_pipe("john", top_k=2)
    with pytest.raises(ValueError, match="aggregation_strategy='best'"):
        ner_pipe("john", aggregation_strategy="best")
    strict = pipeline("ner", ner_dir, max_length=8, truncation=False)
    with pytest.raises(ValueError, match=r"inputs\[1\] is longer than max_length=8"):
        strict(["john", TEXTS[1]])
    cut = pipeline("ner", ner_dir, max_length=8)
    assert max(e["index"] for e in cut(TEXTS[1], ignore_labels=[])) == 6  # [CLS] + 6 + [SEP]
    choose = pipeline("multiple-choice", make_dir("BertForMultipleChoice"))
    with pytest.raises(ValueError, match=r"inputs\[0\] must be \{'text': str, 'choices'"):
        choose({"text": "x", "choices": []})
