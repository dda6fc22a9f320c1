"""Named-entity recognition (CoNLL-2003 style) as transformers' run_ner README runs it: lr 5e-5,
3 epochs, 128 tokens, the label on each word's first sub-word, entity-level F1 (seqeval's
definition) picking the best evaluation.

    flaxbert finetune --config configs/finetune_ner.py --workdir runs/ner \
        --config.model=checkpoints/bert-base-cased \
        --config.data.train=conll2003/train.txt --config.data.validation=conll2003/valid.txt

`:tiny` trains for 100 steps at 64 tokens, for a local CPU run.
"""
from flaxbert.training.finetune import finetune_config, tiny_finetune


def get_config(arg: str = ""):
    if arg not in ("", "tiny"):
        raise ValueError(f"finetune_ner.py: argument {arg!r}; use nothing or tiny")
    c = finetune_config(model="", objective="token_classification")
    c.task.max_seq_length = 128
    c.optimizer.learning_rate = 5e-5
    c.train.global_batch_size = 32
    c.train.num_epochs = 3
    c.train.eval_every = 500
    c.train.best_metric = "eval_f1"
    if arg == "tiny":
        tiny_finetune(c)
    return c
