"""Task data and task metrics for fine-tuning and evaluation.

    readers   local CSV / TSV / JSON(L), CoNLL, SWAG-style files, `tfds:` and `hf:` sources
    labels    the label map fixed once from the training data (id2label / label2id)
    features  tokenization, truncation and word -> sub-word label alignment
    batching  length-bucketed (or packed) resumable batches
    metrics   accuracy, F1, MCC, correlations, entity-level scores (equal to seqeval's)
    glue      the GLUE tasks: their columns, labels and metrics
    qa        SQuAD examples (read_squad) and question + context windows (encode_qa)
    qa_decode window logits -> answer text, n-best and null odds (decode_spans, as run_qa's)
    squad_metrics  the official SQuAD v1.1 / v2.0 exact match and F1 (squad_metrics)
    windows   long inputs: sliding windows with a stride, window logits pooled per document,
              each token's logits from its most central window
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
from flaxbert.tasks.qa import (QAWindow, encode_qa, question_context_windows, question_first,
                               read_squad)
from flaxbert.tasks.qa_decode import QAPredictions, decode_spans
from flaxbert.tasks.readers import (read_choice_examples, read_conll, read_records,
                                    read_sequence_examples, read_token_examples, text_columns)
from flaxbert.tasks.squad_metrics import squad_metrics, squad_v1, squad_v2
from flaxbert.tasks.windows import (WindowLayout, Windows, central_windows,
                                   document_token_logits, pool_window_logits, special_layout,
                                   split_into_windows, window_spans)

__all__ = [name for name in dir() if not name.startswith("_")]
