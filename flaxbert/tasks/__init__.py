"""Task data and task metrics for fine-tuning and evaluation.

    readers   local CSV / TSV / JSON(L), CoNLL, SWAG-style files, `tfds:` and `hf:` sources
    labels    the label map fixed once from the training data (id2label / label2id)
    features  tokenization, truncation and word -> sub-word label alignment
    batching  length-bucketed (or packed) resumable batches
    metrics   accuracy, F1, MCC, correlations, entity-level scores (equal to seqeval's)
    glue      the GLUE tasks: their columns, labels and metrics
"""
from flaxbert.tasks.batching import TaskBatches, default_buckets
from flaxbert.tasks.features import align_labels, encode_choices, encode_sequences, encode_words
from flaxbert.tasks.glue import GLUE_TASKS, GlueTask, glue_task
from flaxbert.tasks.glue import compute_metrics as glue_metrics
from flaxbert.tasks.labels import IGNORE_INDEX, LabelMap, label_map_for, read_label_names
from flaxbert.tasks.metrics import (METRICS, accuracy, classification_report, compute_named_metrics,
                                    entity_report, entity_scores, extract_entities,
                                    matthews_correlation, pearson, precision_recall_f1, spearman,
                                    token_classification_metrics)
from flaxbert.tasks.readers import (read_choice_examples, read_conll, read_records,
                                    read_sequence_examples, read_token_examples, text_columns)

__all__ = [name for name in dir() if not name.startswith("_")]
