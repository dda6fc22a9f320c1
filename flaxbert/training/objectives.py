"""Pre-training objectives: which network, which batch, which loss; one class a paper.

    objective = get_objective("mlm_nsp", flaxbert.get_config("bert-base-uncased"))
    variables = objective.init(rng, batch)                     # boxed {"params": ...}
    params = nn.meta.unbox(variables)["params"]
    loss, metrics = objective.loss(params, batch, rng, deterministic=False)   # jit-able

Batches come from the data pipeline. "mlm" data: input_ids (already masked), attention_mask,
token_type_ids, masked_positions / masked_ids / masked_weights (B, P) and, for a sentence-pair
task, pair_label (B,). "plm" data: input_ids, attention_mask, token_type_ids only; XLNet's
permutation inputs are drawn inside the jitted step.

    mlm           RoBERTa, DeBERTa  "masked-lm"                  MLM
    mlm_nsp       BERT              "pretraining" (+ pair head)  MLM + NSP
    mlm_sop       ALBERT            "pretraining" (+ pair head)  MLM + SOP
    rtd           ELECTRA           ElectraPair                  gen MLM + rtd_weight * RTD
                  DeBERTa-v3        EmbeddingSharingPair (gdes)  (embedding_sharing.py)
    distillation  DistilBERT        "masked-lm", frozen teacher  a_ce KL_T + a_mlm MLM + a_cos cos
    plm           XLNet             "lm"                         permutation LM
    tinybert      TinyBERT          "masked-lm", frozen teacher  emb + hidden + attention MSE
                                                                 (+ soft CE); tinybert.py

Settings are per objective (`Objective.defaults` lists them); an unknown one is an error.
Losses are computed in float32 whatever the model's compute dtype (`flaxbert.training.losses`).
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxbert.layers.config import EncoderConfig
from flaxbert.models import registry
from flaxbert.models.base import ForPreTraining
from flaxbert.models.permutation import IGNORE
from flaxbert.training import losses

TOKEN_KEYS = ("input_ids", "attention_mask")  # token_type_ids is used when present
MASK_KEYS = ("masked_positions", "masked_ids", "masked_weights")
# The pieces XLNet's SentencePiece vocabularies reserve (released checkpoints and
# flaxbert.tokenizer_training alike): <unk> <s> </s> <cls> <sep> <pad> <mask> <eod> <eop>.
XLNET_SPECIAL_IDS = tuple(range(9))


class Objective:
    """Base class: a task model, the batch it reads and its loss. See the module docstring."""

    name: ClassVar[str]
    data: ClassVar[str] = "mlm"  # "mlm": masked batches; "plm": plain ids
    pair_task: ClassVar[str | None] = None  # "nsp" / "sop": the batch must carry pair_label
    task: ClassVar[str] = "masked-lm"  # the family task the network is
    needs_rng: ClassVar[bool] = False  # draws random numbers even when deterministic
    defaults: ClassVar[dict[str, Any]] = {"label_smoothing": 0.0}

    def __init__(self, model_config: EncoderConfig, settings: Mapping[str, Any] | None = None):
        if not isinstance(model_config, EncoderConfig):
            raise TypeError(f"objective {self.name!r} needs an EncoderConfig, got "
                            f"{type(model_config).__name__}")
        settings = dict(settings or {})
        unknown = sorted(set(settings) - set(self.defaults))
        if unknown:
            raise ValueError(f"objective {self.name!r} has no setting(s) {unknown}; its settings "
                             f"are {sorted(self.defaults)}")
        self.config = model_config
        self.settings = {**self.defaults, **settings}
        self.model = self.build_model()

    # ------------------------------------------------------------------ what subclasses change

    def build_model(self) -> nn.Module:
        family = registry.family_of(self.config)
        if self.task not in family.task_models:
            raise ValueError(f"objective {self.name!r} needs a {self.task!r} model, which "
                             f"{family.name} does not have (it has {sorted(family.task_models)})")
        return family.model(self.task, self.config)

    def compute(self, params, batch, rng, deterministic: bool, frozen) -> tuple[jax.Array, dict]:
        raise NotImplementedError

    def head_inputs(self, batch) -> dict:
        """Extra keyword inputs of the network (init and loss)."""
        return {"masked_positions": batch["masked_positions"]} if self.data == "mlm" else {}

    # ------------------------------------------------------------------ the interface

    def required_keys(self) -> tuple[str, ...]:
        keys = TOKEN_KEYS + (MASK_KEYS if self.data == "mlm" else ())
        return keys + (("pair_label",) if self.pair_task else ())

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        """Raise ValueError/TypeError naming what is missing or malformed (shapes only: it
        works on tracers and ShapeDtypeStructs too)."""
        missing = [k for k in self.required_keys() if k not in batch]
        if missing:
            extra = f" ({self.pair_task} labels)" if "pair_label" in missing else ""
            raise ValueError(f"objective {self.name!r} needs batch key(s) {missing}{extra}; the "
                             f"batch has {sorted(batch)}")
        shape = jnp.shape(batch["input_ids"])
        if len(shape) != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {shape}")
        for key in ("attention_mask", "token_type_ids"):
            if key in batch and jnp.shape(batch[key]) != shape:
                raise ValueError(f"{key} has shape {jnp.shape(batch[key])}, input_ids {shape}")
        if self.data == "mlm":
            slots = jnp.shape(batch["masked_positions"])
            if len(slots) != 2 or slots[0] != shape[0]:
                raise ValueError(f"masked_positions must be (batch, predictions) with batch "
                                 f"{shape[0]}, got {slots}")
            for key in MASK_KEYS[1:]:
                if jnp.shape(batch[key]) != slots:
                    raise ValueError(f"{key} has shape {jnp.shape(batch[key])}, "
                                     f"masked_positions {slots}")
            for key in ("masked_positions", "masked_ids"):
                if not jnp.issubdtype(batch[key].dtype, jnp.integer):
                    raise TypeError(f"{key} must be integers, got {batch[key].dtype}")
        if self.pair_task and jnp.shape(batch["pair_label"]) != shape[:1]:
            raise ValueError(f"pair_label must be (batch,) = {shape[:1]}, got "
                             f"{jnp.shape(batch['pair_label'])}")

    def init(self, rng, batch) -> dict:
        """Boxed variables {"params": ...} (nn.Partitioned leaves keep their logical axes)."""
        self.check_batch(batch)
        return self.model.init({"params": rng}, *self.tokens(batch), **self.head_inputs(batch))

    def loss(self, params, batch, rng=None, *, deterministic: bool, frozen=None
             ) -> tuple[jax.Array, dict]:
        """(float32 loss, float32 scalar metrics incl. "loss"). Pure and jit-able; `rng` drives
        dropout (unless deterministic) and any sampling; `frozen` is load_frozen()'s tree."""
        self.check_batch(batch)
        if rng is None and (self.needs_rng or not deterministic):
            raise ValueError(f"objective {self.name!r} needs an rng "
                             f"({'it samples' if self.needs_rng else 'dropout'})")
        if "example_weights" in batch and "masked_weights" in batch:
            # Rows of weight 0 (an evaluation's padding) predict nothing.
            batch = {**batch, "masked_weights": batch["masked_weights"]
                     * batch["example_weights"][:, None].astype(batch["masked_weights"].dtype)}
        loss, metrics = self.compute(params, batch, rng, deterministic, frozen)
        return loss, {**metrics, "loss": loss}

    def evaluate(self, params, batch, frozen=None) -> tuple[jax.Array, dict, dict]:
        """(loss, metrics, outputs) without dropout, for evaluation: `outputs` are per-row
        arrays the data side scores (a task's logits and labels); none for pre-training."""
        loss, metrics = self.loss(params, batch, jax.random.PRNGKey(0), deterministic=True,
                                  frozen=frozen)
        return loss, metrics, {}

    def task_name(self) -> str:
        """The task of the one model trained (what a checkpoint to start from is loaded as)."""
        return self.task

    def params_from(self, path: str, like) -> Any:
        """The params to train, from a checkpoint directory (config.init_from); `like` is the
        run's abstract params, which the trainer checks the result against."""
        import flaxbert
        # The run's vocabulary padding (a tensor-parallel mesh's), which no checkpoint holds.
        return flaxbert.from_pretrained(path, task=self.task_name(),
                                        vocab_pad_multiple=self.config.vocab_pad_multiple)[1]

    def initial_params(self, like, frozen) -> Any:
        """Params to start from instead of a random init when there is no init_from (the
        DistilBERT student from its teacher), or None; `frozen` is load_frozen()'s tree."""
        return None

    def frozen_abstract(self) -> dict | None:
        """Boxed abstract params (eval_shape of init, ["params"]) of the non-trained network
        (distillation's teacher); load_frozen() returns the same tree, concrete and unboxed."""
        return None

    def load_frozen(self) -> dict | None:
        """Concrete unboxed params of the non-trained network (`frozen` of loss)."""
        return None

    def export(self, params) -> list[tuple[str, nn.Module, dict]]:
        """(subdirectory or "", task model, params) to write with flaxbert.save_pretrained."""
        return [("", self.model, params)]

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def row_weights(batch, per_token=None):
        """The optional `example_weights` (B,) of a batch (1 real row, 0 padding), times a per-token
        weight (B, S) when given; all ones without the key."""
        rows = batch.get("example_weights")
        if per_token is None:
            return jnp.ones(jnp.shape(batch["input_ids"])[:1]) if rows is None else rows
        return per_token if rows is None else per_token * rows[:, None].astype(per_token.dtype)

    @staticmethod
    def tokens(batch) -> tuple:
        return batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")

    def apply(self, model, params, tokens, rng, deterministic, **kwargs):
        rngs = None if deterministic else {"dropout": rng}
        return model.apply({"params": params}, *tokens, deterministic=deterministic, rngs=rngs,
                           **kwargs)

    def mlm(self, logits, batch):
        return losses.masked_lm_loss(logits, batch["masked_ids"], batch["masked_weights"],
                                     label_smoothing=self.settings["label_smoothing"])


class MaskedLM(Objective):
    """RoBERTa / DeBERTa (and DistilBERT without a teacher): MLM on the masked positions only."""

    name = "mlm"

    def compute(self, params, batch, rng, deterministic, frozen):
        out = self.apply(self.model, params, self.tokens(batch), rng, deterministic,
                         **self.head_inputs(batch))
        return self.mlm(out.logits, batch)


class MaskedLMWithPair(MaskedLM):
    """MLM + a sentence-pair task on the pooled output of the family's "pretraining" model."""

    task = "pretraining"

    def build_model(self):
        model = super().build_model()
        if not isinstance(model, ForPreTraining):
            raise ValueError(f"objective {self.name!r} needs an MLM + sentence-pair pretraining "
                             f"model; {registry.family_of(self.config).name}'s is "
                             f"{type(model).__name__}")
        return model

    def compute(self, params, batch, rng, deterministic, frozen):
        out = self.apply(self.model, params, self.tokens(batch), rng, deterministic,
                         **self.head_inputs(batch))
        mlm, metrics = self.mlm(out.prediction_logits, batch)
        pair, pair_metrics = losses.sentence_pair_loss(out[self.model.pair_output],
                                                       batch["pair_label"], self.pair_task,
                                                       self.row_weights(batch))
        return mlm + pair, {**metrics, **pair_metrics}


class MaskedLMNextSentence(MaskedLMWithPair):
    """BERT: MLM + next-sentence prediction (seq_relationship_logits)."""

    name = "mlm_nsp"
    pair_task = "nsp"


class MaskedLMSentenceOrder(MaskedLMWithPair):
    """ALBERT: MLM + sentence-order prediction (sop_logits)."""

    name = "mlm_sop"
    pair_task = "sop"


# ----------------------------------------------------------------------------- ELECTRA

def generator_config(discriminator: EncoderConfig, generator: str | EncoderConfig | None = None,
                     size: float = 0.25, depth: float = 1.0) -> EncoderConfig:
    """ELECTRA's generator config: a registered name or config (its vocabulary, positions, token
    types and run-time fields follow the discriminator's), or `size` times the discriminator
    (hidden, heads, intermediate scaled; the same embedding size) with `depth` times its layers.
    ELECTRA's generators are 1/4 (base, large) to 1/3 (small) as wide, as deep; DeBERTa-v3's
    are as wide and half as deep (size=1, depth=0.5)."""
    if generator is not None:
        config = registry.get_config(generator) if isinstance(generator, str) else generator
        if type(config) is not type(discriminator):
            raise ValueError(f"generator config is a {type(config).__name__}, the discriminator's "
                             f"a {type(discriminator).__name__}")
        follow = ("vocab_size", "vocab_pad_multiple", "max_position_embeddings",
                  "type_vocab_size", "pad_token_id", "dtype", "param_dtype", "attention_impl",
                  "scan_layers", "remat_policy")
        config = config.replace(**{k: getattr(discriminator, k) for k in follow})
    else:
        if not 0 < size <= 1:
            raise ValueError(f"generator_size={size} must be in (0, 1]")
        if not 0 < depth <= 1:
            raise ValueError(f"generator_depth={depth} must be in (0, 1]")
        heads = max(1, round(discriminator.num_attention_heads * size))
        hidden = heads * max(1, round(discriminator.hidden_size * size / heads))
        config = discriminator.replace(
            hidden_size=hidden, num_attention_heads=heads,
            intermediate_size=max(1, round(discriminator.intermediate_size * size)),
            num_hidden_layers=max(1, round(discriminator.num_hidden_layers * depth)))
    if config.hidden_size > discriminator.hidden_size:
        raise ValueError(f"the generator (hidden_size={config.hidden_size}) is wider than the "
                         f"discriminator (hidden_size={discriminator.hidden_size}); ELECTRA's "
                         "generator is smaller (1/4 to 1/2 of it)")
    return config


def sample_tokens(key, logits, *, temperature: float = 1.0, method: str = "categorical"):
    """One id a position from softmax(logits / temperature), with no gradient to the logits.
    "categorical": jax.random.categorical; "gumbel": argmax of logits + Gumbel noise (the
    original ELECTRA code's way; the same distribution)."""
    if temperature <= 0:
        raise ValueError(f"sampling temperature={temperature} must be > 0")
    logits = jax.lax.stop_gradient(logits).astype(jnp.float32) / temperature
    if method == "categorical":
        return jax.random.categorical(key, logits).astype(jnp.int32)
    if method == "gumbel":
        return jnp.argmax(logits + jax.random.gumbel(key, logits.shape), -1).astype(jnp.int32)
    raise ValueError(f"sampling={method!r}; choose 'categorical' or 'gumbel'")


def replace_masked_tokens(input_ids, masked_positions, masked_ids, masked_weights, sampled):
    """The discriminator's input: `sampled` (B, P) written at the real masked positions, every
    other token unchanged; and is_replaced (B, S), true where a sample differs from the
    original id (a correct sample counts as original, as in the paper)."""
    input_ids = jnp.asarray(input_ids)
    batch, length = input_ids.shape
    # Padding slots point past the end and are dropped, so they never overwrite a token.
    positions = jnp.where(masked_weights > 0, masked_positions, length)
    rows = jnp.arange(batch)[:, None]
    ids = input_ids.at[rows, positions].set(sampled.astype(input_ids.dtype), mode="drop")
    changed = sampled != masked_ids
    is_replaced = jnp.zeros((batch, length), bool).at[rows, positions].set(changed, mode="drop")
    return ids, is_replaced


class ReplacedTokenDetection(Objective):
    """ELECTRA: the generator's MLM on the masked positions, its samples written there, the
    discriminator told which tokens were replaced; loss = gen MLM + rtd_weight * RTD.

    `embedding_sharing` (flaxbert.training.embedding_sharing): "es" shares one embedding that
    gets gradient from both losses (ELECTRA's ElectraPair, its whole embedding module), "gdes"
    gives the discriminator stop_gradient(E) + its own zero-initialised delta (DeBERTa-v3),
    "nes" shares nothing. Any family with a replaced-token detection model trains (ELECTRA,
    DeBERTa-v2/v3). `init_from` starts from a pair export (generator/ and discriminator/) or,
    with `init_from_generator`, from two directories (released checkpoints)."""

    name = "rtd"
    needs_rng = True
    defaults = {"label_smoothing": 0.0, "generator": None, "generator_size": 0.25,
                "generator_depth": 1.0, "rtd_weight": 50.0, "sampling": "categorical",
                "temperature": 1.0, "embedding_sharing": "es", "init_from_generator": ""}

    def build_model(self):
        from flaxbert.models.electra import ElectraConfig, ElectraPair
        from flaxbert.training.embedding_sharing import EmbeddingSharingPair
        if self.settings["sampling"] not in ("categorical", "gumbel"):
            raise ValueError(f"sampling={self.settings['sampling']!r}; choose 'categorical' or "
                             "'gumbel'")
        self.generator_config = generator_config(self.config, self.settings["generator"],
                                                 self.settings["generator_size"],
                                                 self.settings["generator_depth"])
        sharing = self.settings["embedding_sharing"]
        if isinstance(self.config, ElectraConfig) and sharing == "es":
            return ElectraPair(self.generator_config, self.config)
        return EmbeddingSharingPair(self.generator_config, self.config, sharing)

    def run(self, part, params, tokens, rng, deterministic, **kwargs):
        """The pair's generator (part "generate") or discriminator ("discriminate")."""
        from flaxbert.models.electra import ElectraPair
        if isinstance(self.model, ElectraPair):
            return self.apply(self.model, params, tokens, rng, deterministic,
                              method=getattr(ElectraPair, part), **kwargs)
        module, part_params = self.model.part(part, params)
        return self.apply(module, part_params, tokens, rng, deterministic, **kwargs)

    def corrupt(self, params, batch, rng, deterministic):
        """The generator's logits at the masked positions (B, P, V), the discriminator's input
        ids with its samples written there (B, S), and is_replaced (B, S)."""
        gen_key, sample_key = jax.random.split(rng)
        tokens = self.tokens(batch)
        generated = self.run("generate", params, tokens, gen_key, deterministic,
                             masked_positions=batch["masked_positions"])
        sampled = sample_tokens(sample_key, generated.logits,
                                temperature=self.settings["temperature"],
                                method=self.settings["sampling"])
        ids, is_replaced = replace_masked_tokens(tokens[0], batch["masked_positions"],
                                                 batch["masked_ids"], batch["masked_weights"],
                                                 sampled)
        return generated.logits, ids, is_replaced

    def compute(self, params, batch, rng, deterministic, frozen):
        corrupt_key, disc_key = jax.random.split(rng)
        gen_logits, ids, is_replaced = self.corrupt(params, batch, corrupt_key, deterministic)
        gen_loss, metrics = self.mlm(gen_logits, batch)
        tokens = self.tokens(batch)
        disc = self.run("discriminate", params, (ids,) + tokens[1:], disc_key, deterministic)
        rtd, rtd_metrics = losses.replaced_token_detection_loss(
            disc.logits, is_replaced, self.row_weights(batch, tokens[1]))
        return gen_loss + self.settings["rtd_weight"] * rtd, {**metrics, **rtd_metrics}

    def task_name(self):
        raise ValueError("objective 'rtd' trains a generator + discriminator pair, not one "
                         "task model; it cannot start from a single checkpoint")

    def params_from(self, path, like):
        """The pair from `path`: a pair export (its generator/ and discriminator/), or the
        discriminator's directory with settings["init_from_generator"] the generator's."""
        import flaxbert
        from flaxbert.training.embedding_sharing import checked_params
        gen_dir = self.settings["init_from_generator"]
        parts = [("init_from_generator", gen_dir), ("init_from", path)]
        if not gen_dir:
            pair = [os.path.join(path, sub) for sub in ("generator", "discriminator")]
            if not all(os.path.isdir(p) for p in pair):
                raise ValueError(f"init_from={path}: objective 'rtd' starts a generator and a "
                                 "discriminator; give a pair export (a directory holding "
                                 "generator/ and discriminator/, what an rtd run exports) or "
                                 "the discriminator's directory with "
                                 "objective_settings.init_from_generator")
            parts = [("init_from", pair[0]), ("init_from", pair[1])]
        like_parts = jax.eval_shape(self.model.split, like)
        loaded = []
        for (field, directory), task, part_like in zip(parts, ("masked-lm", "pretraining"),
                                                       like_parts):
            _, params = flaxbert.from_pretrained(
                directory, task=task, vocab_pad_multiple=self.config.vocab_pad_multiple)
            loaded.append(checked_params(params, part_like, f"{field}={directory}"))
        return self.model.join(*loaded)

    def export(self, params):
        gen_params, disc_params = self.model.split(params)
        family = registry.family_of(self.config)
        return [("generator", family.model("masked-lm", self.generator_config), gen_params),
                ("discriminator", family.model("pretraining", self.config), disc_params)]


# ----------------------------------------------------------------------------- DistilBERT

class Distillation(MaskedLM):
    """DistilBERT: the student (the config's "masked-lm" model) learns from a frozen teacher's
    softened logits at the masked positions, the MLM labels and the teacher's last hidden states.

    settings["teacher"] is a checkpoint directory (transformers or flaxbert, loaded with
    flaxbert.from_pretrained) or a registered name initialised from teacher_seed (tests);
    teacher_overrides are config fields for it. The student's compute dtype applies to both.
    init_student_from_teacher starts the student from the teacher's embeddings, MLM head and
    every second layer (student_layers: which teacher layers instead), as the paper did
    (flaxbert.models.distilbert.student_from_teacher)."""

    name = "distillation"
    defaults = {"label_smoothing": 0.0, "teacher": None, "teacher_seed": 0,
                "teacher_overrides": {}, "alpha_ce": 5.0, "alpha_mlm": 2.0, "alpha_cos": 1.0,
                "temperature": 2.0, "init_student_from_teacher": False, "student_layers": ()}

    def initial_params(self, like, frozen):
        if not self.settings["init_student_from_teacher"]:
            return None
        from flaxbert.models.distilbert import student_from_teacher
        from flaxbert.training.embedding_sharing import checked_params
        layers = tuple(self.settings["student_layers"]) or None
        teacher = self.load_frozen() if frozen is None else frozen
        _, params = student_from_teacher(self.teacher, teacher, layers=layers)
        # Copies: the train step donates the student's buffers, and the teacher's are its input.
        params = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), params)
        chosen = f"layers {list(layers)}" if layers else "every second layer"
        return checked_params(params, like, f"objective_settings.init_student_from_teacher: "
                                            f"the teacher {self.settings['teacher']}'s {chosen}")

    def build_model(self):
        student = super().build_model()
        teacher = self.settings["teacher"]
        if not teacher:
            raise ValueError("objective 'distillation' needs settings['teacher']: a checkpoint "
                             "directory or a registered model name")
        overrides = {"dtype": self.config.dtype,
                     "vocab_pad_multiple": self.config.vocab_pad_multiple,
                     **dict(self.settings["teacher_overrides"])}
        self._teacher_params = None
        if os.path.isdir(teacher):
            import flaxbert
            self.teacher, self._teacher_params = flaxbert.from_pretrained(
                teacher, "masked-lm", **overrides)
        else:
            self.teacher = registry.create_model(teacher, "masked-lm", **overrides)
        t, s = self.teacher.config, self.config
        if t.vocab_size != s.vocab_size:
            raise ValueError(f"the teacher's vocab_size={t.vocab_size} differs from the "
                             f"student's {s.vocab_size}; distillation compares their logits")
        if self.settings["alpha_cos"] and t.hidden_size != s.hidden_size:
            raise ValueError(f"the teacher's hidden_size={t.hidden_size} differs from the "
                             f"student's {s.hidden_size}; the cosine loss (alpha_cos="
                             f"{self.settings['alpha_cos']}) needs them equal (or set alpha_cos=0)")
        return student

    def frozen_abstract(self):
        return jax.eval_shape(lambda key: self.teacher.init(key, **self.teacher.dummy_inputs()),
                              jax.random.key(0))["params"]

    def load_frozen(self):
        if self._teacher_params is None:
            import flaxbert
            return flaxbert.init_params(self.teacher, self.settings["teacher_seed"])
        return self._teacher_params

    def compute(self, params, batch, rng, deterministic, frozen):
        if frozen is None:
            raise ValueError("objective 'distillation' needs the teacher's params: "
                             "loss(..., frozen=objective.load_frozen())")
        s = self.settings
        with_hidden = bool(s["alpha_cos"])
        tokens, head_inputs = self.tokens(batch), self.head_inputs(batch)
        teacher = self.teacher.apply({"params": jax.lax.stop_gradient(frozen)}, *tokens,
                                     deterministic=True, output_hidden_states=with_hidden,
                                     **head_inputs)
        teacher = jax.lax.stop_gradient(teacher)
        student = self.apply(self.model, params, tokens, rng, deterministic,
                             output_hidden_states=with_hidden, **head_inputs)
        mlm, metrics = self.mlm(student.logits, batch)
        hidden = ((student.hidden_states[-1], teacher.hidden_states[-1]) if with_hidden
                  else (None, None))
        distill, distill_metrics = losses.distillation_losses(
            student.logits, teacher.logits, batch["masked_weights"], s["temperature"], *hidden,
            self.row_weights(batch, tokens[1]), alpha_ce=s["alpha_ce"], alpha_cos=s["alpha_cos"])
        return distill + s["alpha_mlm"] * mlm, {**metrics, **distill_metrics}


# ----------------------------------------------------------------------------- XLNet

def factorisation_orders(key, batch: int, length: int, perm_size: int | None = None):
    """(batch, length) int32: each token's place in a factorisation order sampled per row; the
    JAX twin of flaxbert.models.permutation.factorisation_order (chunks of perm_size permuted
    alike)."""
    perm_size = length if perm_size is None else perm_size
    if perm_size < 1 or length % perm_size:
        raise ValueError(f"perm_size={perm_size} must divide the length {length}")
    perms = jax.vmap(lambda k: jax.random.permutation(k, perm_size))(jax.random.split(key, batch))
    return orders_from_permutations(perms, length)


def orders_from_permutations(perms, length: int):
    """(batch, perm_size) permutations -> (batch, length) places in the order."""
    chunks = jnp.arange(length).reshape(-1, perms.shape[-1]).T  # (perm_size, chunks)
    return jax.vmap(lambda p: chunks[p].T.reshape(-1))(perms).astype(jnp.int32)


def partial_prediction_inputs(input_ids, attention_mask, orders, *, K: float = 6,
                              num_predict: int | None = None, special_ids: Sequence[int] = (),
                              pad_token_id: int | None = None) -> dict:
    """XLNet's partial prediction inside jit: each row predicts the last ceil(n / K) of its n
    ordinary tokens in `orders` (special, padding and attention_mask-0 tokens are context,
    never predicted). Returns perm_mask (B, S, S), target_mapping (B, num_predict, S) and labels
    (B, num_predict; IGNORE past a row's predictions), what
    flaxbert.models.permutation.partial_prediction_batch builds in NumPy for the same orders
    (leak-free mask, real ids kept). num_predict defaults to ceil(S / K): static shapes."""
    if not K >= 1:
        raise ValueError(f"plm_K={K} must be >= 1 (K=1 predicts every token)")
    length = input_ids.shape[1]
    num_predict = math.ceil(length / K) if num_predict is None else num_predict
    if num_predict < 1:
        raise ValueError(f"num_predict={num_predict} must be >= 1")
    functional = jnp.isin(input_ids, jnp.asarray(tuple(special_ids), jnp.int32)) | (
        attention_mask == 0)
    if pad_token_id is not None:
        functional |= input_ids == pad_token_id
    candidates = ~functional
    n = candidates.sum(-1)
    per_row = (n + int(K) - 1) // int(K) if float(K).is_integer() else jnp.ceil(n / K)
    count = jnp.minimum(per_row.astype(jnp.int32), num_predict)

    def row(candidate, order, count, ids):
        # Context tokens sort first; the last `count` in the order are the targets.
        by_order = jnp.argsort(jnp.where(candidate, order, -1), stable=True)
        targets = jnp.zeros(length, bool).at[by_order].set(jnp.arange(length) >= length - count)
        rank = jnp.where(targets, order, -1)
        perm_mask = ((rank[:, None] <= rank[None, :]) & targets[None, :]).astype(jnp.float32)
        where = jnp.argsort(~targets, stable=True)[:num_predict]  # target positions, ascending
        valid = jnp.arange(num_predict) < count
        mapping = jax.nn.one_hot(where, length, dtype=jnp.float32) * valid[:, None]
        labels = jnp.where(valid, ids[where], IGNORE)
        return perm_mask, mapping, labels

    perm_mask, mapping, labels = jax.vmap(row)(candidates, orders, count, input_ids)
    return {"perm_mask": perm_mask, "target_mapping": mapping, "labels": labels}


class PermutationLM(Objective):
    """XLNet: sample a factorisation order per row inside the step, predict its last 1/plm_K of
    the ordinary tokens through the query stream (num_predict of them at most, static)."""

    name = "plm"
    data = "plm"
    task = "lm"
    needs_rng = True
    defaults = {"plm_K": 6, "num_predict": None, "perm_size": None,
                "special_ids": XLNET_SPECIAL_IDS}

    def build_model(self):
        if not self.settings["plm_K"] >= 1:
            raise ValueError(f"plm_K={self.settings['plm_K']} must be >= 1")
        return super().build_model()

    def plm_inputs(self, key, batch) -> dict:
        s = self.settings
        ids = batch["input_ids"]
        orders = factorisation_orders(key, ids.shape[0], ids.shape[1], s["perm_size"])
        return partial_prediction_inputs(ids, batch["attention_mask"], orders, K=s["plm_K"],
                                         num_predict=s["num_predict"],
                                         special_ids=s["special_ids"],
                                         pad_token_id=self.config.pad_token_id)

    def compute(self, params, batch, rng, deterministic, frozen):
        order_key, dropout_key = jax.random.split(rng)
        plm = self.plm_inputs(order_key, batch)
        out = self.apply(self.model, params, self.tokens(batch), dropout_key, deterministic,
                         perm_mask=plm["perm_mask"], target_mapping=plm["target_mapping"],
                         use_mems=False)
        labels = jnp.where(self.row_weights(batch)[:, None] > 0, plm["labels"], IGNORE)
        return losses.permutation_lm_loss(out.logits, labels)


# ----------------------------------------------------------------------------- fine-tuning

class TaskObjective(Objective):
    """A fine-tuning task: a task model with a fresh (or saved) head and the loss transformers'
    `<Family>For<Task>` computes. Batches: input_ids, attention_mask, token_type_ids and `labels`
    (plus the optional example_weights, 0 for the padding rows of a last batch).

    Packed batches (flaxbert.tasks.batching, pack=True; objectives with `packable`) add
    segment_ids and position_ids (attention stays within each example, positions restart at
    each) and per example (batch, P) example_positions / example_weights, and for sequence
    tasks labels (batch, P): every packed example is scored as if it had a row of its own, so
    the loss and its gradient are those of the same examples unpacked. The training metrics
    carry `real_token_fraction`, the share of the batch's tokens that are not padding."""

    data = "task"
    packable: ClassVar[bool] = False  # may train on packed rows (task.pack)

    def required_keys(self):
        return TOKEN_KEYS + ("labels",)

    def head_inputs(self, batch) -> dict:
        return {}

    @staticmethod
    def packed(batch) -> bool:
        return "segment_ids" in batch

    def packed_inputs(self, batch) -> dict:
        """The network's extra inputs for a packed batch; {} for a padded one."""
        if not self.packed(batch):
            return {}
        return {"segment_ids": batch["segment_ids"], "position_ids": batch["position_ids"]}

    def check_batch(self, batch):
        missing = [k for k in self.required_keys() if k not in batch]
        if missing:
            raise ValueError(f"objective {self.name!r} needs batch key(s) {missing}; the batch "
                             f"has {sorted(batch)}")
        rank = getattr(self.model, "input_rank", 2)
        shape = jnp.shape(batch["input_ids"])
        if len(shape) != rank:
            raise ValueError(f"objective {self.name!r}: input_ids must have rank {rank}, got "
                             f"shape {shape}")
        labels = shape[:self.label_rank]
        if self.packed(batch):
            self._check_packed(batch, shape)
            if self.label_rank == 1:  # one label per packed example
                labels = jnp.shape(batch["example_positions"])
        if jnp.shape(batch["labels"]) != labels:
            raise ValueError(f"objective {self.name!r}: labels must have shape "
                             f"{labels}, got {jnp.shape(batch['labels'])}")

    def _check_packed(self, batch, shape):
        if not self.packable:
            raise ValueError(f"objective {self.name!r} cannot train on packed rows (segment_ids "
                             "in the batch); batch it with pack=False")
        keys = ("position_ids", "example_positions", "example_weights")
        missing = [k for k in keys if k not in batch]
        if missing:
            raise ValueError(f"objective {self.name!r}: a packed batch (segment_ids) needs "
                             f"{missing}; the batch has {sorted(batch)}")
        for key in ("segment_ids", "position_ids"):
            if jnp.shape(batch[key]) != shape:
                raise ValueError(f"{key} has shape {jnp.shape(batch[key])}, input_ids {shape}")
        slots = jnp.shape(batch["example_positions"])
        if len(slots) != 2 or slots[0] != shape[0] or \
                jnp.shape(batch["example_weights"]) != slots:
            raise ValueError(f"example_positions and example_weights must be (batch, examples "
                             f"per row) with batch {shape[0]}, got {slots} and "
                             f"{jnp.shape(batch['example_weights'])}")

    label_rank: ClassVar[int] = 1

    def logits(self, params, batch, rng=None, deterministic=True):
        return self.apply(self.model, params, self.tokens(batch), rng, deterministic,
                          **self.packed_inputs(batch)).logits

    def compute(self, params, batch, rng, deterministic, frozen):
        loss, metrics = self.scored(self.logits(params, batch, rng, deterministic), batch)
        real = jnp.mean((batch["attention_mask"] > 0).astype(jnp.float32))
        return loss, {**metrics, "real_token_fraction": real}

    def scored(self, logits, batch) -> tuple[jax.Array, dict]:
        loss, accuracy = losses.token_cross_entropy(
            logits, batch["labels"], self.label_weights(batch),
            self.settings["label_smoothing"])
        return loss, {"accuracy": accuracy}

    def label_weights(self, batch):
        return self.row_weights(batch)

    def evaluate(self, params, batch, frozen=None):
        self.check_batch(batch)
        logits = self.logits(params, batch)
        loss, metrics = self.scored(logits, batch)
        return loss, {**metrics, "loss": loss}, {"logits": logits.astype(jnp.float32),
                                                 "labels": batch["labels"]}


class SequenceClassification(TaskObjective):
    """Cross entropy over num_labels classes; with num_labels=1, regression (mean squared error
    of the one logit), as transformers chooses."""

    name = "classification"
    task = "sequence-classification"
    packable = True

    def packed_inputs(self, batch):
        inputs = super().packed_inputs(batch)
        return {**inputs, "example_positions": batch["example_positions"]} if inputs else {}

    def scored(self, logits, batch):
        if self.config.num_labels > 1:
            return super().scored(logits, batch)
        error = jnp.square(logits[..., 0].astype(jnp.float32)
                           - batch["labels"].astype(jnp.float32))
        mse = losses.weighted_mean(error, self.row_weights(batch))
        return mse, {"mse": mse}


class TokenClassification(TaskObjective):
    """Per-token cross entropy; labels -100 (sub-words after the first, special tokens,
    padding) are ignored, as in transformers."""

    name = "token_classification"
    task = "token-classification"
    label_rank = 2
    packable = True

    def label_weights(self, batch):
        per_token = (batch["labels"] != IGNORE).astype(jnp.float32)
        # Packed rows weigh examples, not rows; their padding already holds IGNORE labels.
        return per_token if self.packed(batch) else self.row_weights(batch, per_token)


class MultipleChoice(TaskObjective):
    """Cross entropy over the choices: input_ids (batch, choices, length), labels (batch,)."""

    name = "multiple_choice"
    task = "multiple-choice"


class QuestionAnswering(TaskObjective):
    """Extractive QA: the mean of the start and end cross entropies, as transformers'
    `<Family>ForQuestionAnswering` computes them; labels (batch, 2) hold the start and end
    token of the answer (the window's CLS when it has none). Unlike transformers, padding
    positions are left out of the softmax, so a window's loss does not depend on the bucket it
    is padded to."""

    name = "question_answering"
    task = "question-answering"

    def build_model(self):
        if self.settings["label_smoothing"]:
            raise ValueError("objective_settings.label_smoothing: question answering has no "
                             "label smoothing (its softmax is over token positions)")
        return super().build_model()

    def logits(self, params, batch, rng=None, deterministic=True):
        out = self.apply(self.model, params, self.tokens(batch), rng, deterministic)
        logits = jnp.stack([out.start_logits, out.end_logits], axis=1)  # (batch, 2, length)
        keep = batch["attention_mask"][:, None, :].astype(bool)
        return jnp.where(keep, logits.astype(jnp.float32), losses.MASKED_LOGIT)

    def check_batch(self, batch):
        missing = [k for k in self.required_keys() if k not in batch]
        if missing:
            raise ValueError(f"objective {self.name!r} needs batch key(s) {missing}; the batch "
                             f"has {sorted(batch)}")
        shape = jnp.shape(batch["input_ids"])
        if len(shape) != 2 or jnp.shape(batch["labels"]) != (shape[0], 2):
            raise ValueError(f"objective {self.name!r}: input_ids (batch, length) and labels "
                             f"(batch, 2) expected, got {shape} and {jnp.shape(batch['labels'])}")

    def label_weights(self, batch):
        return jnp.broadcast_to(self.row_weights(batch)[:, None], batch["labels"].shape)

    def evaluate(self, params, batch, frozen=None):
        loss, metrics, outputs = super().evaluate(params, batch, frozen)
        return loss, metrics, {"logits": outputs["logits"],
                               "attention_mask": batch["attention_mask"]}


class ChunkClassification(SequenceClassification):
    """Long-document classification by hierarchical chunk encoding
    (flaxbert.models.hierarchical): input_ids (batch, chunks, length), chunks with an all-zero
    attention mask missing, labels (batch,); the loss is SequenceClassification's. Fine-tuning
    selects it with task.long_inputs="chunks", which also sets max_chunks, chunk_pooling and
    how documents are cut (chunk_length, stride). `export` gives the chunk model itself: its
    `save_pretrained` writes the encoder as a transformers base model plus the pooling head's
    own files, which the text-classification pipeline loads."""

    name = "chunk_classification"
    task = "chunk-classification"
    packable = False  # its rows are a document's chunks already
    defaults = {"label_smoothing": 0.0, "max_chunks": 8, "chunk_pooling": "attention",
                "cls_position": "first", "chunk_length": None, "stride": 0}

    def build_model(self):
        from flaxbert.models.hierarchical import HierarchicalClassifier
        s = self.settings
        return HierarchicalClassifier(
            self.config, max_chunks=int(s["max_chunks"]), chunk_pooling=s["chunk_pooling"],
            cls_position=s["cls_position"], stride=int(s["stride"]),
            chunk_length=None if s["chunk_length"] is None else int(s["chunk_length"]))

    def task_name(self) -> str:
        return "base"  # what a checkpoint loads as: the per-chunk encoder

    def export(self, params):
        if self.config.peft not in ("none", "lora"):  # LoRA is folded in; adapters cannot be
            raise ValueError(f"objective 'chunk_classification': peft={self.config.peft!r} "
                             "adapters have no export for the chunk model; train with "
                             "peft='lora' or 'none'")
        return super().export(params)


class MultiTaskClassification(TaskObjective):
    """Several classification tasks on one shared encoder, one head each
    (flaxbert.models.multitask); the batch's `task_id` (batch,) picks each row's head, whose
    cross entropy over that task's own classes is the loss. Every head is computed (small next
    to the encoder) so that one jitted step serves every task. `tasks` ((name, label names),
    ...) come from the data (flaxbert.training.multitask); the export is one
    `<Family>ForSequenceClassification` directory per task."""

    name = "multitask_classification"
    task = "multitask-classification"
    defaults = {"label_smoothing": 0.0, "tasks": ()}

    def build_model(self):
        from flaxbert.models.multitask import multitask_classifier
        self.tasks = tuple((str(name), tuple(labels)) for name, labels in self.settings["tasks"])
        if not self.tasks:
            raise ValueError("objective 'multitask_classification' needs its tasks "
                             "(objective_settings.tasks: ((name, label names), ...)); the "
                             "multi-task data source gives them")
        if self.settings["label_smoothing"]:
            raise ValueError("objective_settings.label_smoothing: multitask_classification "
                             "has no label smoothing (the tasks' class counts differ)")
        return multitask_classifier(self.config,
                                    tuple((n, len(labels)) for n, labels in self.tasks))

    def required_keys(self):
        return super().required_keys() + ("task_id",)

    def logits(self, params, batch, rng=None, deterministic=True):
        """(batch, most labels) float32: each row's task's logits, the classes past that
        task's own at MASKED_LOGIT (probability 0 in the softmax)."""
        per_task = self.apply(self.model, params, self.tokens(batch), rng, deterministic).logits
        width = max(len(labels) for _, labels in self.tasks)
        stacked = jnp.stack([jnp.pad(per_task[name].astype(jnp.float32),
                                     ((0, 0), (0, width - len(labels))),
                                     constant_values=losses.MASKED_LOGIT)
                             for name, labels in self.tasks], axis=1)  # (batch, tasks, width)
        return jnp.take_along_axis(stacked, batch["task_id"][:, None, None], axis=1)[:, 0]

    def evaluate(self, params, batch, frozen=None):
        loss, metrics, outputs = super().evaluate(params, batch, frozen)
        return loss, metrics, {**outputs, "task_id": batch["task_id"]}

    def task_name(self) -> str:
        return "sequence-classification"  # what a checkpoint's encoder loads as

    def export(self, params):
        from flaxbert.models.multitask import single_task
        return [(name, *single_task(self.model, params, name, labels))
                for name, labels in self.tasks]


# TinyBERT's file subclasses the classes above, so it is imported once they exist.
from flaxbert.training.tinybert import TinyBERT, TinyBERTTask  # noqa: E402

OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (
    MaskedLM, MaskedLMNextSentence, MaskedLMSentenceOrder, ReplacedTokenDetection, Distillation,
    PermutationLM, SequenceClassification, TokenClassification, MultipleChoice,
    QuestionAnswering, ChunkClassification, MultiTaskClassification, TinyBERT, TinyBERTTask)}


def get_objective(name: str, model_config: EncoderConfig,
                  settings: Mapping[str, Any] | None = None) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](model_config, settings)
