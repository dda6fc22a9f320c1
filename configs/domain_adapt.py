"""Domain adaptation: continued pre-training of a released checkpoint on in-domain text (BioBERT's
route, any family), or a new in-domain vocabulary and pre-training from scratch (SciBERT's).

Argument: `FAMILY[,tiny]` with FAMILY one of bert, roberta, deberta, albert, electra (continue
from `init_from`, which you fill), or scibert (from scratch on a vocabulary of your own).

1. BioBERT (Lee et al. 2020): BERT-base-cased kept its vocabulary and objective and went on
   pre-training on PubMed abstracts: batch 192, 512 tokens, 200k steps (470k with PMC;
   section 4.2). Its learning rate is not in the paper; 1e-5, a tenth of BERT's peak, is this
   recipe's choice for a start from trained weights (not from a paper). Warmup 10k steps and
   linear decay are Google's run_pretraining.py defaults, which BioBERT ran. Every family
   trains its own paper's objective (BERT MLM + NSP, RoBERTa and DeBERTa MLM, ALBERT MLM + SOP,
   ELECTRA replaced-token detection); the data must be prepared with the CHECKPOINT'S tokenizer
   (ids must mean what the embeddings learned), in the mode of that objective:

    flaxbert prepare pubmed/ --tokenizer CHECKPOINT --mode nsp --max-seq-length 512 --out data/bio
    flaxbert pretrain --config flaxbert:domain_adapt:bert --workdir runs/biobert \
        --config.init_from=CHECKPOINT --config.data.train=data/bio

   (--mode full-sentences for roberta / deberta / electra, sop for albert.) A DeBERTa-v3
   release is a discriminator without an MLM head: the head starts fresh (with a warning), as
   in transformers' run_mlm. ELECTRA continues a pair: init_from is a pair export (generator/
   and discriminator/), or the discriminator with objective_settings.init_from_generator.
   To add domain words to the checkpoint first, run
   `flaxbert extend-vocab CHECKPOINT --corpus pubmed.txt --top 5000 --out CHECKPOINT+` and use
   CHECKPOINT+ for both commands (WordPiece tokenizers: bert, electra).

2. SciBERT (Beltagy et al. 2019): a WordPiece vocabulary of 30k built on the scientific corpus
   (SciVocab), then BERT-base trained from scratch with BERT's recipe, 128 tokens first and
   512 after (section 3): here the 128 -> 512 switch is `data.seq_length_schedule`, on data
   prepared once at 512 (NSP pairs cut to 128 may lose their second segment; prepare a second
   directory at 128 and run bert_base.py's two phases instead for the exact recipe):

    flaxbert train-tokenizer papers/*.txt --out scivocab --kind wordpiece --vocab-size 30000 \
        --no-lowercase
    flaxbert prepare papers/ --tokenizer scivocab --mode nsp --max-seq-length 512 --out data/sci
    flaxbert pretrain --config flaxbert:domain_adapt:scibert --workdir runs/scibert \
        --config.data.train=data/sci

`,tiny` switches to the family's tiny registered model for a local run on a CPU (its init_from
must then be a tiny checkpoint of that family).
"""
from flaxbert.training.config import default_config, tiny_run

# family -> (registered model, objective, prepare --mode, tiny model)
FAMILIES = {
    "bert": ("bert-base-cased", "mlm_nsp", "nsp", "bert-tiny"),
    "roberta": ("roberta-base", "mlm", "full-sentences", "roberta-tiny"),
    "deberta": ("deberta-v3-base", "mlm", "full-sentences", "deberta-v3-tiny"),
    "albert": ("albert-base-v2", "mlm_sop", "sop", "albert-tiny"),
    "electra": ("electra-base-discriminator", "rtd", "full-sentences", "electra-tiny"),
    "scibert": ("bert-base-cased", "mlm_nsp", "nsp", "bert-tiny"),
}


def get_config(arg: str = "bert"):
    family, *rest = [a.strip() for a in arg.split(",")]
    if family not in FAMILIES or rest not in ([], ["tiny"]):
        raise ValueError(f"domain_adapt.py: argument {arg!r}; use FAMILY or FAMILY,tiny with "
                         f"FAMILY one of {', '.join(FAMILIES)}")
    model, objective, _, tiny_model = FAMILIES[family]
    c = default_config()
    c.model, c.objective = model, objective
    c.data.max_predictions_per_seq = 0  # sized to 15% of the row's length
    if family == "scibert":  # from scratch: BERT's recipe (bert_base.py), 128 then 512 tokens
        c.train.global_batch_size, c.train.num_steps = 256, 1_000_000
        c.optimizer.learning_rate, c.optimizer.warmup_steps = 1e-4, 10_000
        c.data.seq_length_schedule = "128:0.9,512:0.1"
    else:  # BioBERT: continue from the released weights
        c.init_from = ""  # the checkpoint directory: --config.init_from=DIR
        c.train.global_batch_size, c.train.num_steps = 192, 200_000
        c.optimizer.learning_rate, c.optimizer.warmup_steps = 1e-5, 10_000
    c.optimizer.weight_decay = 0.01
    c.optimizer.decay = "linear"
    if family == "deberta":
        c.data.whole_word = True  # as DeBERTa-v3 masked
    if family == "albert":
        c.data.max_ngram = 3  # ALBERT's n-gram masking
    if family == "electra":
        c.objective_settings.generator = "electra-base-generator"
        c.objective_settings.rtd_weight = 50.0
    c.checkpoint.save_every = 10_000
    if rest == ["tiny"]:
        tiny_run(c, tiny_model, learning_rate=1e-3 if family == "scibert" else 1e-4)
        if family == "electra":
            c.objective_settings.generator = "electra-tiny-generator"
        if family == "scibert":
            c.data.seq_length_schedule = "32:0.5,64:0.5"  # tiny data is prepared at 64
    return c
