"""How a family's parameters are named in transformers (declared by each family file)."""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable


# Our tasks -> transformers' class-name suffixes; the embedding model is saved as the bare model.
TASK_CLASSES = (
    ("base", "Model"), ("pretraining", "ForPreTraining"), ("masked-lm", "ForMaskedLM"),
    ("next-sentence", "ForNextSentencePrediction"),
    ("sequence-classification", "ForSequenceClassification"),
    ("token-classification", "ForTokenClassification"),
    ("question-answering", "ForQuestionAnswering"), ("multiple-choice", "ForMultipleChoice"),
    ("embedding", "Model"),
)


@dataclasses.dataclass(frozen=True)
class HFSpec:
    """transformers naming for one family.

    rules: (regex on a flax module path, template) pairs, first full match wins; `{base}` in a
      template is the base-model prefix ("bert.") inside task models and "" in the bare model.
    ignore: regexes of checkpoint keys that hold no parameter of ours (tied decoders); the
      embeddings' index buffers are always ignored.
    task_classes: our task -> transformers class-name suffix ("masked-lm" -> "ForMaskedLM").
    """

    model_type: str
    class_prefix: str
    base_prefix: str
    rules: tuple[tuple[str, str], ...]
    ignore: tuple[str, ...] = ()
    task_classes: tuple[tuple[str, str], ...] = TASK_CLASSES
    # Head weight prefixes (transformers names) that belong to some task head, not the backbone.
    head_prefixes: tuple[str, ...] = ()
    # (transformers config field, our field) where the names differ (DistilBERT's dim, ...).
    config_renames: tuple[tuple[str, str], ...] = ()
    # (regex on a flax parameter path, axis permutation flax -> torch) for weights that are not
    # Dense kernels, e.g. a Conv1d kernel: flax (width, in, out) -> torch (out, in, width).
    layouts: tuple[tuple[str, tuple[int, ...]], ...] = ()
    # Rules that depend on the config (DeBERTa's legacy MLM head names), tried first.
    config_rules: Callable[[object], tuple[tuple[str, str], ...]] | None = None
    # Our fields left out of config.json (transformers' XLNetConfig rejects max_position_...).
    config_omit: tuple[str, ...] = ()
    # (field, value): a null in config.json means this value, not our default (XLNet mem_len).
    config_null_values: tuple[tuple[str, object], ...] = ()
    # config.json fields whose other values we do not implement: (field, allowed values).
    config_requirements: tuple[tuple[str, tuple], ...] = ()

    def module_name(self, flax_module_path: str, base: str, config=None) -> str:
        rules = self.rules
        if self.config_rules is not None and config is not None:
            rules = self.config_rules(config) + rules
        for pattern, template in rules:
            m = re.fullmatch(pattern, flax_module_path)
            if m:
                return m.expand(template.replace("{base}", base))
        raise KeyError(f"no transformers name for flax module {flax_module_path!r} "
                       f"in the {self.model_type} naming rules")

    def layout(self, flax_param_path: str) -> tuple[int, ...] | None:
        for pattern, permutation in self.layouts:
            if re.fullmatch(pattern, flax_param_path):
                return permutation
        return None

    def is_ignored(self, hf_key: str) -> bool:
        # Older checkpoints of every family carry these index buffers; they hold no weights.
        buffers = rf"({re.escape(self.base_prefix)}\.)?embeddings\.(position_ids|token_type_ids)"
        return any(re.fullmatch(p, hf_key) for p in self.ignore + (buffers,))

    def architecture(self, task: str) -> str:
        return self.class_prefix + dict(self.task_classes)[task]

    def task_of(self, architecture: str) -> str | None:
        for task, suffix in self.task_classes:
            if architecture == self.class_prefix + suffix:
                return task
        return None
