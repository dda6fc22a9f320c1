"""`fill-mask`: the most likely tokens at each mask, as transformers' FillMaskPipeline lists."""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

from flaxbert.pipelines.base import Pipeline, as_inputs

log = logging.getLogger(__name__)


class FillMaskPipeline(Pipeline):
    """pipe("Paris is the [MASK] of France.", top_k=5, targets=None): a list of
    {score, token, token_str, sequence} per mask (one list for one mask), per input.
    Only the mask positions are decoded over the vocabulary, so a batch never holds
    (batch, length, vocab) logits."""

    task = "fill-mask"
    heads = ("masked-lm",)
    reads_heads_of = {"pretraining": "masked-lm"}  # MLM + NSP exports (`make demo`'s) fill masks
    defaults = {"top_k": 5, "targets": None}

    def __init__(self, model_dir, **kwargs):
        super().__init__(model_dir, **kwargs)
        self.mask_id = self.tokenizer.mask_token_id
        if self.mask_id is None:
            raise ValueError(f"{model_dir}: the tokenizer has no mask token, which fill-mask needs")

    def forward(self, params, ids, mask, types, num_masks):
        # Mask positions first (stable, so in text order); rows with fewer masks pad with others.
        positions = jnp.argsort(ids != self.mask_id, axis=-1, stable=True)[:, :num_masks]
        logits = self.model.apply({"params": params}, ids, mask, types,
                                  masked_positions=positions).logits
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    def target_ids(self, targets) -> np.ndarray:
        """Vocabulary ids of `targets`; a word outside the vocabulary becomes its first
        sub-word, with a warning (transformers' rule)."""
        targets = [targets] if isinstance(targets, str) else targets
        ids = []
        for target in targets:
            i = self._encoder.token_to_id(target)
            if i is None:
                pieces = self._encoder.encode(target, add_special_tokens=False).ids
                if not pieces:
                    log.warning("target %r is not in the vocabulary and tokenizes to nothing; "
                                "ignored", target)
                    continue
                i = pieces[0]
                log.warning("target %r is not in the vocabulary; using %r", target,
                            self._encoder.id_to_token(i))
            ids.append(i)
        if not ids:
            raise ValueError(f"targets={targets!r}: none of them maps to a vocabulary token")
        return np.array(sorted(set(ids)))

    def __call__(self, inputs, **call_options):
        texts, _ = as_inputs(inputs, str, "a text with a mask token")
        opts = self.options(call_options)
        targets = None if opts["targets"] is None else self.target_ids(opts["targets"])
        top_k = opts["top_k"] if targets is None else min(opts["top_k"], len(targets))
        encodings = self.encode(texts)
        counts = [e.ids.count(self.mask_id) for e in encodings]
        if 0 in counts:
            raise ValueError(f"inputs[{counts.index(0)}] has no mask token "
                             f"{self._encoder.id_to_token(self.mask_id)!r} (after truncation)")
        # Compile for a power of two masks per row, so varied counts reuse a few programs.
        num_masks = 1 << (max(counts) - 1).bit_length()
        results = [self.fill(e.ids, probs[:n], top_k, targets)
                   for e, n, (probs, _) in zip(encodings, counts,
                                               self.run(encodings, num_masks=num_masks))]
        # transformers unwraps one input, whether or not it came in a list
        return results[0] if len(results) == 1 else results

    def fill(self, ids, probs, top_k, targets):
        ids = np.array(ids)
        masked = np.flatnonzero(ids == self.mask_id)
        if targets is not None:
            probs = probs[:, targets]
        single = len(masked) == 1
        rows = []
        for position, p in zip(masked, probs):
            best = np.argsort(-p, kind="stable")[:top_k]
            row = []
            for choice in best:
                token = int(choice if targets is None else targets[choice])
                filled = ids.copy()
                filled[position] = token
                filled = filled[filled != self.tokenizer.pad_token_id]
                row.append({"score": float(p[choice]), "token": token,
                            "token_str": self.tokenizer.decode([token], skip_special_tokens=False),
                            "sequence": self.tokenizer.decode(filled,
                                                              skip_special_tokens=single)})
            rows.append(row)
        return rows[0] if single else rows
