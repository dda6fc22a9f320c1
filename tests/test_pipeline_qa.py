"""The question-answering pipeline against transformers v4's QuestionAnsweringPipeline algorithm,
re-implemented here from v4.57's preprocess / postprocess (decode_spans, select_starts_ends)
on transformers' own tokenizer (overflowing windows with a stride, offsets, word ids) and its
PyTorch AutoModelForQuestionAnswering on the same directory (v5 has no such pipeline).

Tiny random checkpoints of every tokenizer kind: BERT WordPiece, RoBERTa byte-level BPE,
ALBERT SentencePiece, DeBERTa-v3 SentencePiece, and XLNet (SentencePiece, context first, left
padding), with tokenizers trained here. Also: the post-processing on hand-made logits, one
compilation per bucket for a stream, and one-line errors for bad input.
"""
import os

# Before transformers / huggingface_hub are imported: never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import shutil

import numpy as np
import pytest
import torch
import transformers

from flaxbert.pipelines import pipeline
from flaxbert.pipelines.question_answering import best_spans, decode_answers
from flaxbert.tasks.qa import question_context_windows
from flaxbert.tokenizer import Tokenizer
from flaxbert.tokenizer_training import train_tokenizer

WORDS = ("the river Thames flows through London past Westminster and the Tower its estuary "
         "reaches the North Sea kings built palaces along it merchants traded wool and spices "
         "engineers bridged it many times where does who what did when was which").split()
PUNCTUATION = [",", ";", ".", "?"]
SEQ_LEN, STRIDE = 40, 12  # windows of 40 tokens, padded to the 48 bucket
BUCKET = 48
_BERTLIKE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=37, max_position_embeddings=64, initializer_range=0.3)
# family -> (tokenizer kind, style, vocabulary size, config class, config fields)
FAMILIES = {
    "bert": ("wordpiece", None, 150, transformers.BertConfig, _BERTLIKE),
    "roberta": ("bpe", None, 420, transformers.RobertaConfig,
                dict(_BERTLIKE, type_vocab_size=1, max_position_embeddings=66)),
    "albert": ("sentencepiece", "albert", 150, transformers.AlbertConfig,
               dict(_BERTLIKE, embedding_size=16)),
    "deberta-v3": ("sentencepiece", "deberta", 150, transformers.DebertaV2Config,
                   dict(_BERTLIKE, type_vocab_size=0, relative_attention=True, position_buckets=8,
                        norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type="p2c|c2p",
                        position_biased_input=False)),
    "xlnet": ("sentencepiece", "xlnet", 150, transformers.XLNetConfig,
              dict(d_model=32, n_layer=2, n_head=4, d_inner=37, initializer_range=0.3)),
}
# (top_k, handle_impossible_answer, align_to_words, max_answer_len)
SETTINGS = [(1, False, True, 15), (3, False, True, 15), (1, True, True, 15), (3, True, True, 15),
            (3, True, False, 4)]


def _text(rs, n):
    words = [w if rs.rand() > 0.15 else w + rs.choice(PUNCTUATION) for w in rs.choice(WORDS, n)]
    return " ".join(words)


def _examples():
    rs = np.random.RandomState(7)
    return [{"question": "Where does the Thames flow?", "context": _text(rs, 90)},
            {"question": "who built palaces",
             "context": _text(rs, 40) + " Kings, KINGS and kings."},
            {"question": "What did merchants trade?", "context": _text(rs, 8)}]


EXAMPLES = _examples()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rs = np.random.RandomState(0)
    path = tmp_path_factory.mktemp("qa-corpus") / "corpus.txt"
    path.write_text("\n".join(_text(rs, 12) for _ in range(300)) + "\n")
    return path


def _checkpoint(name, corpus, root):
    """(name, checkpoint directory, transformers tokenizer, torch model, our pipeline)."""
    kind, style, size, config_cls, fields = FAMILIES[name]
    train_tokenizer([corpus], root / "tokenizer", kind, size, style=style, min_frequency=1)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(root / "tokenizer")
    specials = dict(pad_token_id=hf_tokenizer.pad_token_id)
    if name in ("roberta", "xlnet"):
        specials.update(bos_token_id=hf_tokenizer.bos_token_id,
                        eos_token_id=hf_tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = transformers.AutoModelForQuestionAnswering.from_config(
        config_cls(vocab_size=len(hf_tokenizer), **specials, **fields)).eval()
    with torch.no_grad():  # transformers zero-inits biases; randomise so the comparison sees them
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        model.qa_outputs.weight.mul_(4.0)  # peaked span probabilities, as a trained head gives
    directory = root / "checkpoint"
    model.save_pretrained(directory)
    for f in (root / "tokenizer").iterdir():
        shutil.copy(f, directory / f.name)
    pipe = pipeline("question-answering", directory, buckets=(24, BUCKET), max_length=BUCKET,
                    batch_size=8)
    return name, directory, hf_tokenizer, model, pipe


@pytest.fixture(scope="module")
def checkpoints(corpus, tmp_path_factory):
    """name -> _checkpoint(name), each built once for the module."""
    built = {}

    def get(name):
        if name not in built:
            built[name] = _checkpoint(name, corpus, tmp_path_factory.mktemp(f"qa-{name}"))
        return built[name]
    return get


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, checkpoints):
    return checkpoints(request.param)


@pytest.fixture(scope="module")
def bert(checkpoints):
    return checkpoints("bert")


# ---- the reference: transformers v4's algorithm on transformers' tokenizer and model --------

def v4_windows(tokenizer, question, context, max_seq_len, doc_stride):
    question_first = tokenizer.padding_side == "right"
    return tokenizer(question if question_first else context,
                     context if question_first else question,
                     truncation="only_second" if question_first else "only_first",
                     max_length=max_seq_len, stride=doc_stride, return_overflowing_tokens=True,
                     return_offsets_mapping=True, return_token_type_ids=True)


_LOGITS = {}


def torch_logits(model, ids, types):
    """(start, end) logits, each (1, length), of one unpadded window; cached, as every setting
    reads the same windows."""
    key = (id(model), tuple(ids), tuple(types))
    if key not in _LOGITS:
        with torch.no_grad():
            out = model(input_ids=torch.tensor(ids[None]),
                        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                        token_type_ids=torch.tensor([types]))
        _LOGITS[key] = out.start_logits.numpy(), out.end_logits.numpy()
    start, end = _LOGITS[key]
    return start.copy(), end.copy()


def v4_answers(tokenizer, model, question, context, *, top_k=1, handle_impossible_answer=False,
               max_seq_len=SEQ_LEN, doc_stride=STRIDE, max_answer_len=15, align_to_words=True):
    question_first = tokenizer.padding_side == "right"
    context_id = 1 if question_first else 0
    encoded = v4_windows(tokenizer, question, context, max_seq_len, doc_stride)
    pre_topk = top_k * 2 + 10 if align_to_words else top_k
    min_null_score = 1000000
    answers = []
    for span in range(len(encoded["input_ids"])):
        ids = np.array(encoded["input_ids"][span])
        # v4 writes `tok != 1 if question_first else 0`, masking nothing for context-first
        # XLNet; the pipeline masks XLNet's question too (its docstring), and so does this.
        p_mask = np.array([s != context_id for s in encoded.sequence_ids(span)], dtype=np.int64)
        p_mask[ids == tokenizer.cls_token_id] = 0
        # v4 reads the null answer at position 0: BERT's CLS; XLNet's CLS is last.
        cls = 0 if question_first else len(ids) - 1
        start, end = torch_logits(model, ids, encoded["token_type_ids"][span])
        undesired_tokens = np.abs(p_mask - 1)[None]
        undesired_tokens_mask = undesired_tokens == 0.0
        start = np.where(undesired_tokens_mask, -10000.0, start)
        end = np.where(undesired_tokens_mask, -10000.0, end)
        start = np.exp(start - start.max(axis=-1, keepdims=True))
        start = start / start.sum()
        end = np.exp(end - end.max(axis=-1, keepdims=True))
        end = end / end.sum()
        if handle_impossible_answer:
            min_null_score = min(min_null_score, (start[0, cls] * end[0, cls]).item())
        start[0, cls] = end[0, cls] = 0.0
        # decode_spans
        outer = np.matmul(np.expand_dims(start, -1), np.expand_dims(end, 1))
        candidates = np.tril(np.triu(outer), max_answer_len - 1)
        scores_flat = candidates.flatten()
        if pre_topk == 1:
            idx_sort = [np.argmax(scores_flat)]
        elif len(scores_flat) < pre_topk:
            idx_sort = np.argsort(-scores_flat)
        else:
            idx = np.argpartition(-scores_flat, pre_topk)[0:pre_topk]
            idx_sort = idx[np.argsort(-scores_flat[idx])]
        starts, ends = np.unravel_index(idx_sort, candidates.shape)[1:]
        wanted = np.flatnonzero(undesired_tokens[0])
        keep = np.isin(starts, wanted) & np.isin(ends, wanted)
        for s, e in zip(starts[keep], ends[keep]):
            score = candidates[0, s, e]
            offsets = encoded["offset_mapping"][span]
            try:
                if not align_to_words:
                    raise LookupError
                start_word = encoded.token_to_word(span, int(s))
                end_word = encoded.token_to_word(span, int(e))
                start_index = encoded.word_to_chars(span, start_word, sequence_index=context_id)[0]
                end_index = encoded.word_to_chars(span, end_word, sequence_index=context_id)[1]
            except Exception:
                start_index, end_index = offsets[s][0], offsets[e][1]
            target = context[start_index:end_index]
            same = [a for a in answers if a["answer"].lower() == target.lower()]
            if same:
                same[0]["score"] += score.item()
            else:
                answers.append({"score": score.item(), "start": start_index, "end": end_index,
                                "answer": target})
    if handle_impossible_answer:
        answers.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
    answers = sorted(answers, key=lambda x: x["score"], reverse=True)[:top_k]
    return answers[0] if top_k == 1 and answers else answers


def assert_same(ours, theirs, where):
    if isinstance(theirs, dict):
        ours, theirs = [ours], [theirs]
    assert isinstance(ours, list) and len(ours) == len(theirs), (where, ours, theirs)
    for a, b in zip(ours, theirs):
        assert isinstance(a, dict) and list(a) == ["score", "start", "end", "answer"], (where, a)
        assert (a["answer"], a["start"], a["end"]) == (b["answer"], b["start"], b["end"]), \
            (where, ours, theirs)
        assert type(a["start"]) is int and type(a["score"]) is float, (where, a)
        np.testing.assert_allclose(a["score"], b["score"], rtol=1e-4, err_msg=str(where))


# ---- parity ---------------------------------------------------------------------------------

@pytest.mark.parametrize("top_k,handle_impossible_answer,align_to_words,max_answer_len", SETTINGS)
def test_answers_equal_transformers_v4(family, top_k, handle_impossible_answer, align_to_words,
                                       max_answer_len):
    name, _, tokenizer, model, pipe = family
    options = dict(top_k=top_k, handle_impossible_answer=handle_impossible_answer,
                   align_to_words=align_to_words, max_answer_len=max_answer_len,
                   max_seq_len=SEQ_LEN, doc_stride=STRIDE)
    got = pipe(EXAMPLES, **options)
    assert isinstance(got, list) and len(got) == len(EXAMPLES)
    for i, (example, ours) in enumerate(zip(EXAMPLES, got)):
        expected = v4_answers(tokenizer, model, example["question"], example["context"],
                              **options)
        assert_same(ours, expected, (name, i, options))
        for answer in ([ours] if top_k == 1 else ours):
            assert answer["answer"] == example["context"][answer["start"]:answer["end"]]
            assert (answer["answer"] != "") or handle_impossible_answer
            assert len(answer["answer"]) < len(example["context"])


def test_the_long_context_is_read_in_windows(family):
    name, _, tokenizer, _, pipe = family
    example = EXAMPLES[0]
    encoded = v4_windows(tokenizer, example["question"], example["context"], SEQ_LEN, STRIDE)
    windows = question_context_windows(pipe.tokenizer, [example["question"]],
                                       [example["context"]], max_length=SEQ_LEN, stride=STRIDE)[0]
    assert len(windows) == len(encoded["input_ids"]) >= 3, name
    # Answers come from past the first window, and scores are far from flat: the best is
    # worth many times a window's uniform span score.
    context_ends = [e for (_, e), sid in zip(windows[0].offsets, windows[0].sequence_ids)
                    if sid == pipe.context_sequence]
    answers = pipe(**example, top_k=10, max_seq_len=SEQ_LEN, doc_stride=STRIDE)
    assert any(a["start"] >= max(context_ends) for a in answers), (name, answers)
    assert answers[0]["score"] > 10 / (len(context_ends) * 15), (name, answers)


def test_call_forms_and_defaults(bert):
    _, _, tokenizer, model, pipe = bert
    q, c = EXAMPLES[1]["question"], EXAMPLES[1]["context"]
    # defaults: max_seq_len = min(384, max_length 48), doc_stride = 24, top_k 1
    expected = v4_answers(tokenizer, model, q, c, max_seq_len=BUCKET, doc_stride=BUCKET // 2)
    for got in (pipe(question=q, context=c), pipe({"question": q, "context": c}), pipe(q, c)):
        assert_same(got, expected, "single")
    assert_same(pipe([{"question": q, "context": c}])[0], expected, "list of one")
    both = pipe(question=[q, EXAMPLES[0]["question"]], context=c)  # one context for both
    assert len(both) == 2 and both[0] == pipe(question=[q], context=[c])[0]
    assert_same(both[1], v4_answers(tokenizer, model, EXAMPLES[0]["question"], c,
                                    max_seq_len=BUCKET, doc_stride=BUCKET // 2), "shared context")


def test_xlnet_puts_the_context_first_and_pads_left(checkpoints):
    _, _, tokenizer, _, pipe = checkpoints("xlnet")
    assert pipe.tokenizer.padding_side == tokenizer.padding_side == "left"
    assert pipe.context_sequence == 0
    windows = question_context_windows(pipe.tokenizer, [EXAMPLES[0]["question"]],
                                       [EXAMPLES[0]["context"]], max_length=SEQ_LEN,
                                       stride=STRIDE)[0]
    assert windows[0].ids[-1] == pipe.tokenizer.cls_token_id
    assert windows[0].sequence_ids[0] == 0  # context first
    # Every window is shorter than its bucket, and the engine pads on the left.
    assert all(len(w) < BUCKET for w in windows)
    for window, (logits, mask) in zip(windows, pipe.run(windows)):
        assert logits.shape == (BUCKET, 2)
        assert mask.tolist() == [0] * (BUCKET - len(window)) + [1] * len(window)


# ---- post-processing on hand-made logits ----------------------------------------------------

@pytest.fixture(scope="module")
def bert_windows(corpus, tmp_path_factory):
    directory = tmp_path_factory.mktemp("qa-wordpiece") / "tok"
    train_tokenizer([corpus], directory, "wordpiece", 150, min_frequency=1)
    tokenizer = Tokenizer.from_pretrained(directory)
    context = "Merchants traded wool, and kings built palaces along the Thames."
    windows = question_context_windows(tokenizer, ["who built palaces?"], [context],
                                       max_length=20, stride=4)[0]
    return tokenizer, context, windows


def _logits(window, start_token, end_token, cls=0.0):
    logits = np.zeros((len(window), 2))
    logits[start_token, 0] = logits[end_token, 1] = 8.0
    logits[0] = cls
    return logits


def test_decode_answers_on_made_up_logits(bert_windows):
    tokenizer, context, windows = bert_windows
    assert len(windows) >= 2
    window = windows[0]
    tokens = [i for i, s in enumerate(window.sequence_ids) if s == 1]
    kw = dict(context_sequence=1, cls_token_id=tokenizer.cls_token_id)
    # the span tokens[1]..tokens[2] of the first window; later windows have flat logits
    logits = [_logits(window, tokens[1], tokens[2])] + [np.zeros((len(w), 2)) for w in windows[1:]]
    best = decode_answers(context, windows, logits, align_to_words=False, **kw)[0]
    start, end = window.offsets[tokens[1]][0], window.offsets[tokens[2]][1]
    assert (best["start"], best["end"], best["answer"]) == (start, end, context[start:end])
    assert best["score"] > 0.5
    # max_answer_len=2 allows that span, 1 does not
    assert decode_answers(context, windows, logits, max_answer_len=1, align_to_words=False,
                          **kw)[0]["answer"] != best["answer"]
    # a question token with a huge logit is masked, so the answer does not move there
    question_token = window.sequence_ids.index(0)
    logits[0][question_token] = 50.0
    assert decode_answers(context, windows, logits, align_to_words=False, **kw)[0] == best
    # a dominant CLS wins when impossible answers are allowed, and only then
    logits = [_logits(w, tokens[1], tokens[2], cls=30.0) for w in windows]
    null = decode_answers(context, windows, logits, handle_impossible_answer=True, **kw)[0]
    assert (null["answer"], null["start"], null["end"]) == ("", 0, 0) and null["score"] > 0.99
    assert decode_answers(context, windows, logits, **kw)[0]["answer"] != ""


def test_best_spans_rank_allowed_spans_only():
    rs = np.random.RandomState(0)
    start, end = rs.dirichlet(np.ones(12)), rs.dirichlet(np.ones(12))
    allowed = np.ones(12, bool)
    allowed[[0, 5]] = False
    starts, ends, scores = best_spans(start, end, allowed, top_k=500, max_answer_len=3)
    assert np.all(starts <= ends) and np.all(ends < starts + 3)
    assert not np.isin(starts, [0, 5]).any() and not np.isin(ends, [0, 5]).any()
    assert np.all(np.diff(scores) <= 0)
    np.testing.assert_allclose(scores, start[starts] * end[ends])
    brute = sorted((start[s] * end[e] for s in range(12) for e in range(s, min(s + 3, 12))
                    if allowed[s] and allowed[e]), reverse=True)
    np.testing.assert_allclose(scores, brute)


# ---- compilations and errors ----------------------------------------------------------------

def test_a_stream_compiles_once_per_bucket(bert):
    pipe = bert[-1]
    long, short = EXAMPLES[0], {"question": "who built it?", "context": "Kings built palaces."}
    windows = question_context_windows(pipe.tokenizer, [long["question"], short["question"]],
                                       [long["context"], short["context"]], max_length=SEQ_LEN,
                                       stride=STRIDE)
    assert {pipe.engine.bucket_for(len(w)) for ws in windows for w in ws} == {24, BUCKET}
    for stream in ([long, short] * 3, [short] * 11 + [long], [long] * 2):
        pipe(stream, max_seq_len=SEQ_LEN, doc_stride=STRIDE, top_k=2)
    # whatever else ran on this pipeline before: the same two buckets
    assert pipe.compilations["question-answering"] == 2


def _one_line_error(pipe, kind, match, *args, **kwargs):
    with pytest.raises(kind, match=match) as info:
        pipe(*args, **kwargs)
    assert "\n" not in str(info.value)


def test_bad_input_gives_one_line(bert):
    pipe = bert[-1]
    good = EXAMPLES[2]
    _one_line_error(pipe, ValueError, r"inputs\[1\]\['question'\] is empty",
                    [good, {"question": "", "context": "the river"}])
    _one_line_error(pipe, ValueError, r"inputs\[0\]\['context'\] is empty",
                    question="where", context="  ")
    _one_line_error(pipe, TypeError, r"inputs\[0\]\['context'\] is int",
                    {"question": "where", "context": 3})
    _one_line_error(pipe, ValueError, r"inputs\[0\] must be \{'question'",
                    {"question": "where", "text": "x"})
    _one_line_error(pipe, TypeError, "no option 'topk'", good, topk=2)
    _one_line_error(pipe, ValueError, "top_k must be an int >= 1", good, top_k=0)
    _one_line_error(pipe, ValueError, "2 questions but 3 contexts",
                    question=["a", "b"], context=["x", "y", "z"])
    _one_line_error(pipe, ValueError, "max_seq_len=64 exceeds the pipeline's max_length=48",
                    good, max_seq_len=64)
    _one_line_error(pipe, ValueError, "doc_stride=41 is larger than max_seq_len=40",
                    good, max_seq_len=40, doc_stride=41)
    long_question = {"question": " ".join(["where"] * 30), "context": EXAMPLES[0]["context"]}
    _one_line_error(pipe, ValueError, r"inputs\[1\]: the question takes \d+ tokens",
                    [good, long_question], max_seq_len=40, doc_stride=12)
    _one_line_error(pipe, TypeError, "question= and context=", question="where")
