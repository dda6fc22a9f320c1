"""TinyBERT distillation (Jiao et al. 2020) as two objectives: a student of any BERT-family size
learns a frozen teacher's layers, then its predictions.

    tinybert       general stage, pre-training data (masked batches), teacher "masked-lm"
    tinybert_task  task stage, a fine-tuning task's batches, teacher a fine-tuned classifier

loss = alpha_embedding * L_emb + alpha_hidden * L_hidn + alpha_attention * L_attn
       + alpha_prediction * L_pred

- L_emb:  MSE(E_S W_e, E_T) on the embedding outputs (hidden_states[0]);
- L_hidn: sum over the student's layers m of MSE(H_S[m] W_h, H_T[g(m)]);
- L_attn: sum over m of MSE(A_S[m], A_T[g(m)]), averaged over heads;
- L_pred: soft cross entropy -sum softmax(z_T / t) log softmax(z_S / t) on the MLM logits at
  the masked positions (general) or the task logits (task; MSE of the logits for regression).

The MSEs are means over the feature (or key) axis and over the real tokens only (attention_mask,
times a task batch's example_weights), so padding neither adds to nor dilutes them. W_e and W_h
(one for every layer, as in the paper) are learned only when the student and teacher widths
differ; they are training-only parameters, kept under params["tinybert_projection"] and never
exported. The layer map g is uniform by default, g(m) = m * N // M for a student of M and a
teacher of N layers (1-based; the paper's 4-layer student of BERT-base reads layers 3, 6, 9, 12),
or settings["layer_map"], one teacher layer per student layer.

Attention: flaxbert's models return the attention *probabilities* with output_attentions
(post-softmax; flaxbert.layers.attention never keeps the pre-softmax scores), so L_attn compares
probabilities, over the real keys. The paper uses the unnormalised scores; getting them would
change the shared attention function, and a row's probabilities fix its scores up to a constant
anyway. Probabilities are bounded, so L_attn is small next to L_hidn (1e-4 on random tiny models,
1e-2 on a fine-tuned one): raise alpha_attention to weigh it more. Student and teacher need the
same head count.

Task stage: the paper runs intermediate-layer distillation, then prediction-layer distillation.
Both are this objective with other weights (configs/tinybert.py:task then :task_prediction, the
second starting from the first's export); the objective's own defaults sum all four terms. The
evaluation scores the student's task predictions against the labels (accuracy, the data's
metrics), as a fine-tuning run does.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxbert.models import registry
from flaxbert.training import losses
from flaxbert.training.objectives import Distillation, MaskedLM, SequenceClassification

PROJECTION = "tinybert_projection"  # the params entry of W_e / W_h (never exported)
LOSS_TERMS = ("embedding", "hidden", "attention", "prediction")


def uniform_layer_map(student_layers: int, teacher_layers: int) -> tuple[int, ...]:
    """g(m) = m * N // M for m = 1..M: the teacher layer (1-based) each student layer learns."""
    if student_layers < 1 or teacher_layers < 1:
        raise ValueError(f"layer counts must be >= 1, got student {student_layers}, teacher "
                         f"{teacher_layers}")
    return tuple(m * teacher_layers // student_layers for m in range(1, student_layers + 1))


def layer_map(student_layers: int, teacher_layers: int,
              explicit: Sequence[int] | None = None) -> tuple[int, ...]:
    """The uniform map, or `explicit` (one teacher layer in 1..N per student layer) checked."""
    if not explicit:
        return uniform_layer_map(student_layers, teacher_layers)
    explicit = tuple(int(n) for n in explicit)
    if len(explicit) != student_layers:
        raise ValueError(f"objective_settings.layer_map={explicit} must name one teacher layer "
                         f"per student layer ({student_layers})")
    if not all(1 <= n <= teacher_layers for n in explicit):
        raise ValueError(f"objective_settings.layer_map={explicit}: teacher layers are 1.."
                         f"{teacher_layers}")
    return explicit


def token_mse(student, teacher, weights):
    """mean over the last axis of (student - teacher)^2, weighted mean over the tokens."""
    error = jnp.mean(jnp.square(student.astype(jnp.float32) - teacher.astype(jnp.float32)), -1)
    return losses.weighted_mean(error, weights)


def attention_mse(student, teacher, attention_mask, weights):
    """(B, H, Q, K) probabilities: the squared error averaged over the real keys and the heads,
    then the weighted mean over the query tokens (`weights` (B, Q))."""
    keys = attention_mask.astype(jnp.float32)[:, None, None, :]
    error = jnp.sum(jnp.square(student.astype(jnp.float32) - teacher.astype(jnp.float32)) * keys,
                    -1) / jnp.maximum(jnp.sum(keys, -1), 1.0)
    return losses.weighted_mean(jnp.mean(error, 1), weights)


def soft_cross_entropy(student_logits, teacher_logits, weights, temperature: float):
    """-sum_v softmax(z_T / t)_v log softmax(z_S / t)_v, weighted mean over the leading axes."""
    if not temperature > 0:
        raise ValueError(f"objective_settings.temperature={temperature} must be > 0")
    target = jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature, -1)
    log_p = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, -1)
    return losses.weighted_mean(-jnp.sum(target * log_p, -1), weights)


class _TinyBERT:
    """What both stages share: the teacher, the layer map, W_e / W_h and the four terms. Mixed
    in before an Objective class; `teacher_task` is the teacher's (and student's) task model."""

    teacher_task: str
    defaults = {"label_smoothing": 0.0, "teacher": None, "teacher_seed": 0,
                "teacher_overrides": {}, "layer_map": (), "temperature": 1.0,
                "alpha_embedding": 1.0, "alpha_hidden": 1.0, "alpha_attention": 1.0,
                "alpha_prediction": 1.0}

    def build_model(self):
        student = super().build_model()
        s = self.settings
        for term in LOSS_TERMS:
            if s[f"alpha_{term}"] < 0:
                raise ValueError(f"objective_settings.alpha_{term}={s[f'alpha_{term}']} must "
                                 "be >= 0")
        if not any(s[f"alpha_{term}"] for term in LOSS_TERMS):
            raise ValueError(f"objective {self.name!r}: every objective_settings.alpha_* is 0, "
                             "so nothing would be learned")
        if not s["temperature"] > 0:
            raise ValueError(f"objective_settings.temperature={s['temperature']} must be > 0")
        teacher = s["teacher"]
        if not teacher:
            raise ValueError(f"objective {self.name!r} needs objective_settings.teacher: a "
                             "checkpoint directory or a registered model name")
        overrides = {"dtype": self.config.dtype, **self.teacher_fields(),
                     **dict(s["teacher_overrides"])}
        self._teacher_params = None
        if os.path.isdir(teacher):
            import flaxbert
            self.teacher, self._teacher_params = flaxbert.from_pretrained(
                teacher, self.teacher_task, **overrides)
        else:
            self.teacher = registry.create_model(teacher, self.teacher_task, **overrides)
        t, c = self.teacher.config, self.config
        if t.vocab_size != c.vocab_size:
            raise ValueError(f"objective_settings.teacher: its vocab_size={t.vocab_size} differs "
                             f"from the student's {c.vocab_size}; TinyBERT compares them token "
                             "by token (use the teacher's tokenizer)")
        if s["alpha_attention"] and t.num_attention_heads != c.num_attention_heads:
            raise ValueError(f"objective_settings.teacher has {t.num_attention_heads} attention "
                             f"heads, the student {c.num_attention_heads}; the attention loss "
                             "compares head by head (or set alpha_attention=0)")
        self.layer_map = layer_map(c.num_hidden_layers, t.num_hidden_layers, s["layer_map"])
        self.projected = (t.hidden_size != c.hidden_size
                          and bool(s["alpha_embedding"] or s["alpha_hidden"]))
        return student

    def teacher_fields(self) -> dict:
        """Config fields a registered teacher name takes from the student (none by default)."""
        return {}

    def on(self, term: str) -> bool:
        """Whether a term is computed (its weight is not 0)."""
        return bool(self.settings[f"alpha_{term}"])

    # ---- parameters -----------------------------------------------------------------------
    def init_projection(self, rng) -> dict:
        """Boxed {"embedding": {"kernel"}, "hidden": {"kernel"}}: W_e, W_h (student width ->
        teacher width, no bias, as the paper's matrices), each while its term is on; {} when
        the widths are equal."""
        if not self.projected:
            return {}
        init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", None))
        shape = (self.config.hidden_size, self.teacher.config.hidden_size)
        keys = dict(zip(("embedding", "hidden"), jax.random.split(rng)))
        return {name: {"kernel": init(key, shape, jnp.float32)} for name, key in keys.items()
                if self.on(name)}

    def init(self, rng, batch):
        student_rng, projection_rng = jax.random.split(rng)
        variables = super().init(student_rng, batch)
        projection = self.init_projection(projection_rng)
        if not projection:
            return variables
        return {**variables, "params": {**variables["params"], PROJECTION: projection}}

    def complete_params(self, params):
        """A saved student's params (an init_from / fine-tuning start) with fresh W_e / W_h:
        the Trainer calls this before checking a checkpoint's params against the run's."""
        if not self.projected or PROJECTION in params:
            return params
        return {**params, PROJECTION: nn.meta.unbox(self.init_projection(jax.random.key(0)))}

    @staticmethod
    def student_params(params):
        return {k: v for k, v in params.items() if k != PROJECTION}

    def export(self, params):
        return [("", self.model, self.student_params(params))]

    # The teacher is held as DistilBERT's is (self.teacher, self._teacher_params, teacher_seed).
    frozen_abstract = Distillation.frozen_abstract
    load_frozen = Distillation.load_frozen

    # ---- the loss -------------------------------------------------------------------------
    def forward(self, params, batch, rng, deterministic, frozen):
        """(student output, teacher output), with the hidden states and the attentions when
        the terms that read them are on (attentions make the attention run as `xla`)."""
        if frozen is None:
            raise ValueError(f"objective {self.name!r} needs the teacher's params: "
                             "loss(..., frozen=objective.load_frozen())")
        wanted = {"output_hidden_states": self.on("embedding") or self.on("hidden"),
                  "output_attentions": self.on("attention")}
        tokens, inputs = self.tokens(batch), self.head_inputs(batch)
        teacher = self.teacher.apply({"params": jax.lax.stop_gradient(frozen)}, *tokens,
                                     deterministic=True, **wanted, **inputs)
        student = self.apply(self.model, self.student_params(params), tokens, rng,
                             deterministic, **wanted, **inputs)
        return student, jax.lax.stop_gradient(teacher)

    def intermediate_terms(self, params, student, teacher, batch) -> dict:
        """The "embedding", "hidden" and "attention" losses (float32 scalars) of the mapped
        layers, those that are on."""
        weights = self.row_weights(batch, batch["attention_mask"].astype(jnp.float32))
        projection = params.get(PROJECTION, {})

        def project(x, name):
            if name not in projection:
                return x
            return x.astype(jnp.float32) @ projection[name]["kernel"].astype(jnp.float32)

        pairs = tuple(enumerate(self.layer_map, start=1))  # (student m, teacher g(m)), 1-based
        terms = {}
        if self.on("embedding"):
            terms["embedding"] = token_mse(project(student.hidden_states[0], "embedding"),
                                           teacher.hidden_states[0], weights)
        if self.on("hidden"):
            terms["hidden"] = sum(token_mse(project(student.hidden_states[m], "hidden"),
                                            teacher.hidden_states[n], weights) for m, n in pairs)
        if self.on("attention"):
            terms["attention"] = sum(attention_mse(student.attentions[m - 1],
                                                   teacher.attentions[n - 1],
                                                   batch["attention_mask"], weights)
                                     for m, n in pairs)
        return terms

    def combined(self, terms: dict) -> tuple[jax.Array, dict]:
        s = self.settings
        loss = sum(s[f"alpha_{k}"] * v for k, v in terms.items())
        return jnp.asarray(loss, jnp.float32), {f"{k}_loss": v for k, v in terms.items()}


class TinyBERT(_TinyBERT, MaskedLM):
    """TinyBERT's general distillation: on masked pre-training batches, the student (the
    config's "masked-lm" model) learns a frozen "masked-lm" teacher's embeddings, hidden states
    and attentions (and, with alpha_prediction > 0, its MLM predictions at the masked
    positions). See the module docstring."""

    name = "tinybert"
    teacher_task = "masked-lm"
    defaults = {**_TinyBERT.defaults, "alpha_prediction": 0.0}  # the paper's general stage

    def compute(self, params, batch, rng, deterministic, frozen):
        student, teacher = self.forward(params, batch, rng, deterministic, frozen)
        terms = self.intermediate_terms(params, student, teacher, batch)
        if self.on("prediction"):
            terms["prediction"] = soft_cross_entropy(student.logits, teacher.logits,
                                                     batch["masked_weights"],
                                                     self.settings["temperature"])
        loss, metrics = self.combined(terms)
        # The student's own MLM loss is reported (not trained on): how far the general stage
        # has taught it the masked tokens.
        _, mlm = self.mlm(jax.lax.stop_gradient(student.logits), batch)
        return loss, {**metrics, **mlm}


class TinyBERTTask(_TinyBERT, SequenceClassification):
    """TinyBERT's task-specific distillation on a fine-tuning task's batches (the fine-tuning
    path: `flaxbert finetune`, TaskData): the teacher is a fine-tuned
    `<Family>ForSequenceClassification` directory, the student the config's model (the general
    stage's export, say) with its classification head. Prediction-layer distillation is the soft
    cross entropy of the task logits (MSE for regression, num_labels=1), with the labels in the
    student's order (the teacher's id2label is permuted to it when both have names)."""

    name = "tinybert_task"
    teacher_task = "sequence-classification"
    packable = False  # the attention loss reads one example's keys per row
    task_kind = "classification"  # what TaskData reads and scores the data as

    def teacher_fields(self):
        return {"num_labels": self.config.num_labels}

    def build_model(self):
        student = super().build_model()
        t, c = self.teacher.config, self.config
        if t.num_labels != c.num_labels:
            raise ValueError(f"objective_settings.teacher has num_labels={t.num_labels}, the "
                             f"task {c.num_labels}")
        self.label_order = None
        names_t, names_s = tuple(t.id2label or ()), tuple(c.id2label or ())
        if names_t and names_s and names_t != names_s:
            if sorted(names_t) != sorted(names_s):
                raise ValueError(f"objective_settings.teacher's labels {list(names_t)} are not "
                                 f"the task's {list(names_s)}")
            self.label_order = tuple(names_t.index(n) for n in names_s)
        return student

    def compute(self, params, batch, rng, deterministic, frozen):
        student, teacher = self.forward(params, batch, rng, deterministic, frozen)
        terms = self.intermediate_terms(params, student, teacher, batch)
        if self.on("prediction"):
            teacher_logits = teacher.logits
            if self.label_order is not None:
                teacher_logits = teacher_logits[..., jnp.asarray(self.label_order)]
            rows = self.row_weights(batch)
            if self.config.num_labels == 1:
                terms["prediction"] = losses.weighted_mean(
                    jnp.square(student.logits[..., 0].astype(jnp.float32)
                               - teacher_logits[..., 0].astype(jnp.float32)), rows)
            else:
                terms["prediction"] = soft_cross_entropy(student.logits, teacher_logits, rows,
                                                         self.settings["temperature"])
        loss, metrics = self.combined(terms)
        _, scored = self.scored(jax.lax.stop_gradient(student.logits), batch)
        return loss, {**metrics, **scored}

    def logits(self, params, batch, rng=None, deterministic=True):
        return super().logits(self.student_params(params), batch, rng, deterministic)
