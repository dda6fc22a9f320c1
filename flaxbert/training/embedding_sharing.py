"""How replaced-token detection's generator and discriminator share embeddings (DeBERTa-v3,
He et al. 2021): the three ways the paper compares, for any family with a masked-LM and a
replaced-token detection model (DeBERTa-v2/v3, ELECTRA).

    nes   no sharing: each network has its own tables.
    es    plain sharing (ELECTRA): one table E; the generator's MLM loss and the discriminator's
          RTD loss both update it (the "tug-of-war" the paper measures).
    gdes  gradient-disentangled sharing: the discriminator embeds with stop_gradient(E) + E_delta,
          E_delta its own table initialised to zeros. The MLM loss alone updates E, the RTD loss
          E_delta (and the rest of the discriminator). The export folds E + E_delta into the
          discriminator's table, so the discriminator is a plain model of its family.

The tables shared are the word embeddings and, where a config embeds absolute positions, the
position embeddings: what the official code shares (DeBERTa/apps/tasks/rtd_task.py). Layer norms
and token types stay each network's own.

Params of the pair: {"generator": <its masked-lm params>, "discriminator": <its replaced-token
detection params, less the shared tables under es and gdes>, "embedding_delta": {table:
{"embedding": E_delta}} under gdes}. The objective takes gradients of generator MLM + rtd_weight x
RTD in one step; the paper's code updates the generator first and runs the discriminator on the
updated E, here the discriminator reads E as it was before the step (each loss still reaches only
its own tables).
"""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

from flaxbert.layers.config import EncoderConfig
from flaxbert.models import registry
from flaxbert.models.base import ForReplacedTokenDetection

log = logging.getLogger(__name__)

SHARINGS = ("gdes", "es", "nes")


def shared_tables(config: EncoderConfig) -> tuple[str, ...]:
    """The embedding tables the two networks share: words, and positions when embedded."""
    positions = getattr(config, "position_biased_input", True)
    return ("word_embeddings",) + (("position_embeddings",) if positions else ())


class EmbeddingSharingPair:
    """A generator (the family's "masked-lm" model) and a discriminator (its "pretraining" model,
    which must be a replaced-token detector) with `sharing` one of SHARINGS. It mimics the part of
    a flax module the objective uses: `init`, and `split` / `join` to and from the two separate
    models' params (what an export writes)."""

    def __init__(self, generator_config: EncoderConfig, discriminator_config: EncoderConfig,
                 sharing: str):
        if sharing not in SHARINGS:
            raise ValueError(f"objective_settings.embedding_sharing={sharing!r}; choose one of "
                             f"{list(SHARINGS)}")
        family = registry.family_of(discriminator_config)
        self.generator = family.model("masked-lm", generator_config)
        self.discriminator = family.model("pretraining", discriminator_config)
        if not isinstance(self.discriminator, ForReplacedTokenDetection):
            raise ValueError(f"objective 'rtd' trains an ELECTRA pair (a generator and a "
                             f"replaced-token detector); {family.name} has no replaced-token "
                             f"detection model (its 'pretraining' model is "
                             f"{type(self.discriminator).__name__}); ELECTRA and DeBERTa-v2/v3 "
                             "have one")
        self.sharing = sharing
        self.tables = () if sharing == "nes" else shared_tables(discriminator_config)
        if sharing != "nes":
            fields = ("vocab_size", "embedding_width", "max_position_embeddings",
                      "position_biased_input")
            for field in fields:
                gen, disc = (getattr(c, field, None) for c in (generator_config,
                                                               discriminator_config))
                if gen != disc:
                    raise ValueError(f"embedding_sharing={sharing!r}: the generator's {field}="
                                     f"{gen} differs from the discriminator's {disc}; shared "
                                     "embeddings need them equal (or use 'nes')")

    # --------------------------------------------------------------------- the module interface

    def init(self, rngs, input_ids, attention_mask=None, token_type_ids=None, *,
             masked_positions=None) -> dict:
        """Boxed {"params": ...} of the pair (nn.Partitioned leaves keep their logical axes)."""
        key = rngs["params"] if isinstance(rngs, dict) else rngs
        gen_key, disc_key = jax.random.split(key)
        tokens = (input_ids, attention_mask, token_type_ids)
        gen = self.generator.init({"params": gen_key}, *tokens,
                                  masked_positions=masked_positions)["params"]
        disc = self.discriminator.init({"params": disc_key}, *tokens)["params"]
        params = {"generator": gen, "discriminator": self._without_tables(disc)}
        if self.sharing == "gdes":
            embeddings = disc["backbone"]["embeddings"]
            # Zeros keep the tables' boxes (logical axes), so the delta is sharded like them.
            params["embedding_delta"] = jax.tree_util.tree_map(
                jnp.zeros_like, {name: embeddings[name] for name in self.tables})
        return {"params": params}

    def discriminator_params(self, params: dict, *, training: bool = True) -> dict:
        """The discriminator's full params: its own, with the shared tables put in (under gdes
        stop_gradient(E) + E_delta; `training=False` leaves out the stop_gradient, for export,
        where it changes nothing but the tracing)."""
        if self.sharing == "nes":
            return params["discriminator"]
        source = params["generator"]["backbone"]["embeddings"]
        tables = {}
        for name in self.tables:
            table = source[name]["embedding"]
            if self.sharing == "gdes":
                frozen = jax.lax.stop_gradient(table) if training else table
                table = frozen + params["embedding_delta"][name]["embedding"]
            tables[name] = {"embedding": table}
        disc = params["discriminator"]
        backbone = disc["backbone"]
        return {**disc, "backbone": {**backbone,
                                     "embeddings": {**backbone["embeddings"], **tables}}}

    def part(self, name: str, params: dict) -> tuple:
        """(module, params) of the generator (name "generate") or discriminator
        ("discriminate"), what the objective applies."""
        if name == "generate":
            return self.generator, params["generator"]
        return self.discriminator, self.discriminator_params(params)

    def split(self, params: dict) -> tuple[dict, dict]:
        """Pair params -> (generator params, discriminator params), each a plain model's, the
        delta folded into the discriminator's tables."""
        return params["generator"], self.discriminator_params(params, training=False)

    def join(self, generator_params: dict, discriminator_params: dict) -> dict:
        """(generator params, discriminator params), as `split` gives them or two released
        checkpoints hold them -> pair params. gdes: E_delta = the discriminator's table - the
        generator's; es: the generator's table is kept (a warning when the discriminator's
        differs)."""
        params = {"generator": generator_params,
                  "discriminator": self._without_tables(discriminator_params)}
        if self.sharing == "nes":
            return params
        gen = generator_params["backbone"]["embeddings"]
        disc = discriminator_params["backbone"]["embeddings"]
        if self.sharing == "gdes":
            params["embedding_delta"] = {
                name: {"embedding": np.asarray(disc[name]["embedding"], np.float32)
                       - np.asarray(gen[name]["embedding"], np.float32)}
                for name in self.tables}
        elif any(not np.array_equal(np.asarray(disc[n]["embedding"]),
                                    np.asarray(gen[n]["embedding"])) for n in self.tables):
            log.warning("embedding_sharing='es': the discriminator's embedding tables differ "
                        "from the generator's; the pair keeps the generator's")
        return params

    # --------------------------------------------------------------------- helpers

    def _without_tables(self, disc: dict) -> dict:
        if not self.tables:
            return disc
        backbone = disc["backbone"]
        rest = {k: v for k, v in backbone["embeddings"].items() if k not in self.tables}
        return {**disc, "backbone": {**backbone, "embeddings": rest}}


def checked_params(params, like, source: str):
    """`params`, or ValueError "<source>: parameter ... " naming the first that differs from
    `like` (the run's abstract params)."""
    problem = parameter_mismatch(params, like)
    if problem:
        raise ValueError(f"{source}: {problem}")
    return params


def parameter_mismatch(params, like) -> str | None:
    """The first difference between two parameter trees, in words naming the parameter
    ("backbone/encoder/layers_1/... is missing"), or None when names and shapes agree."""
    def flat(tree):
        leaves = jax.tree_util.tree_leaves_with_path(tree)
        return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(x))
                for path, x in leaves}
    have, want = flat(params), flat(like)
    for name in sorted(want):
        if name not in have:
            return f"parameter {name} is missing there"
        if have[name] != want[name]:
            return f"parameter {name} has shape {have[name]} there, {want[name]} in this run"
    extra = sorted(set(have) - set(want))
    return f"parameter {extra[0]} there has no place in this run" if extra else None
