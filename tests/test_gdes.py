"""DeBERTa-v3's replaced-token detection with gradient-disentangled embedding sharing (GDES) and
the two ways it is compared with (es: ELECTRA's plain sharing, nes: none): which loss reaches
which table (on gradients), the loss against transformers' networks loaded from the export, the
export folding the delta in, and a tiny `flaxbert pretrain` of configs/deberta_v3_base.py:tiny."""
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxbert
from flaxbert.training import objectives
from flaxbert.training.objectives import get_objective

VOCAB, MASK = 99, 4
REPO = Path(__file__).resolve().parent.parent
# One layer each, to keep the compiles short (the recipe's half-depth generator is checked in
# test_the_recipe_sizes_the_generator_as_the_paper and trained in the CLI test).
SETTINGS = {"generator_size": 1.0, "generator_depth": 1.0, "rtd_weight": 10.0}


def rtd(sharing, **settings):
    config = flaxbert.get_config("deberta-v3-tiny", vocab_size=VOCAB, num_hidden_layers=1,
                                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return get_objective("rtd", config, {**SETTINGS, "embedding_sharing": sharing, **settings})


def test_the_recipe_sizes_the_generator_as_the_paper():
    """DeBERTa-v3's generator: the discriminator's width, half its layers (rtd_base.json)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("recipe", REPO / "configs" / "deberta_v3_base.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    assert (c.objective, c.objective_settings.embedding_sharing) == ("rtd", "gdes")
    s = c.objective_settings
    gen = objectives.generator_config(flaxbert.get_config(c.model), None, s.generator_size,
                                      s.generator_depth)
    assert (gen.hidden_size, gen.num_attention_heads, gen.intermediate_size,
            gen.num_hidden_layers) == (768, 12, 3072, 6)


def masked_batch():
    """3 rows of 16 tokens (the last two rows padded), 4 prediction slots (row 2 uses 2)."""
    rs = np.random.RandomState(0)
    ids = rs.randint(5, VOCAB, (3, 16)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 12:], mask[2, 9:] = 0, 0
    ids[mask == 0] = 0
    positions = np.array([[1, 4, 7, 10], [2, 3, 9, 11], [1, 5, 0, 0]], np.int32)
    weights = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]], np.float32)
    originals = np.take_along_axis(ids, positions, 1) * (weights > 0)
    for b in range(3):
        ids[b, positions[b][weights[b] > 0]] = MASK
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids),
                masked_positions=positions, masked_ids=originals.astype(np.int32),
                masked_weights=weights)


def table(params, *path):
    node = params
    for key in path:
        node = node[key]
    return np.asarray(node)


GEN_E = ("generator", "backbone", "embeddings", "word_embeddings", "embedding")
DELTA = ("embedding_delta", "word_embeddings", "embedding")
DISC_E = ("discriminator", "backbone", "embeddings", "word_embeddings", "embedding")


@pytest.fixture(scope="module")
def gradients():
    """sharing -> (params, d mlm_loss / d params, d rtd_loss / d params) on the initial pair
    (one jacobian, one compile per sharing, computed when first asked for)."""
    batch, cache = masked_batch(), {}

    def get(sharing):
        if sharing not in cache:
            objective = rtd(sharing)
            params = nn.meta.unbox(objective.init(jax.random.key(0), batch))["params"]

            def both(p):
                _, metrics = objective.loss(p, batch, jax.random.key(1), deterministic=True)
                return jnp.stack([metrics["mlm_loss"], metrics["rtd_loss"]])
            jac = jax.jit(jax.jacrev(both))(params)
            cache[sharing] = (params, jax.tree_util.tree_map(lambda g: np.asarray(g[0]), jac),
                              jax.tree_util.tree_map(lambda g: np.asarray(g[1]), jac))
        return cache[sharing]
    return get


def test_gdes_keeps_the_discriminator_loss_off_the_shared_embeddings(gradients):
    params, mlm, rtd_grad = gradients("gdes")
    assert not np.any(table(params, *DELTA))  # zero-initialised
    assert "word_embeddings" not in params["discriminator"]["backbone"]["embeddings"]
    # RTD: nothing to E (exactly), something to the delta and the discriminator.
    assert not np.any(table(rtd_grad, *GEN_E))
    assert np.abs(table(rtd_grad, *DELTA)).sum() > 0
    assert np.abs(table(rtd_grad, "discriminator", "backbone", "encoder", "layers_0", "attention",
                        "query", "kernel")).sum() > 0
    # MLM: E and the generator learn, the delta does not.
    assert np.abs(table(mlm, *GEN_E)).sum() > 0
    assert not np.any(table(mlm, *DELTA))
    # The generator gets no RTD gradient anywhere: the discriminator reads its samples.
    assert not any(np.any(g) for g in jax.tree_util.tree_leaves(rtd_grad["generator"]))


def test_es_routes_both_losses_to_the_one_table(gradients):
    es_params, es_mlm, es_rtd = gradients("es")
    _, gdes_mlm, gdes_rtd = gradients("gdes")
    assert "embedding_delta" not in es_params
    # es: both losses pull the one table; the RTD pull is what gdes sends to the delta instead
    # (same weights: the pairs start alike and the delta at zero).
    np.testing.assert_allclose(table(es_rtd, *GEN_E), table(gdes_rtd, *DELTA), atol=1e-7)
    assert np.abs(table(es_rtd, *GEN_E)).sum() > 0
    np.testing.assert_allclose(table(es_mlm, *GEN_E), table(gdes_mlm, *GEN_E), atol=1e-7)


@pytest.mark.slow
def test_nes_gives_each_network_its_own_table(gradients):
    nes_params, nes_mlm, nes_rtd = gradients("nes")
    assert table(nes_params, *DISC_E).shape == table(nes_params, *GEN_E).shape
    assert not np.any(table(nes_rtd, *GEN_E)) and np.abs(table(nes_rtd, *DISC_E)).sum() > 0
    assert not np.any(table(nes_mlm, *DISC_E)) and np.abs(table(nes_mlm, *GEN_E)).sum() > 0


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A gdes pair with a non-zero delta (as after training), exported as the trainer does."""
    objective = rtd("gdes", temperature=1e-4)  # near-argmax samples, so a reference can redo them
    batch = masked_batch()
    params = nn.meta.unbox(objective.init(jax.random.key(0), batch))["params"]
    delta = np.random.RandomState(1).normal(0, 0.05, table(params, *DELTA).shape)
    params["embedding_delta"]["word_embeddings"]["embedding"] = jnp.asarray(delta, jnp.float32)
    root = tmp_path_factory.mktemp("gdes-export")
    for sub, module, part in objective.export(jax.device_get(params)):
        flaxbert.save_pretrained(root / sub, module, part, format="hf")
    return objective, batch, params, root


def test_export_folds_the_delta_and_a_run_restarts_from_it(exported):
    objective, _, params, root = exported
    from safetensors.numpy import load_file
    disc = load_file(root / "discriminator" / "model.safetensors")
    gen = load_file(root / "generator" / "model.safetensors")
    e, delta = table(params, *GEN_E), table(params, *DELTA)
    np.testing.assert_array_equal(gen["deberta.embeddings.word_embeddings.weight"], e)
    np.testing.assert_allclose(disc["deberta.embeddings.word_embeddings.weight"], e + delta,
                               rtol=0, atol=1e-7)
    like = jax.eval_shape(lambda: params)
    again = objective.params_from(str(root), like)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(again),
                            jax.tree_util.tree_leaves(params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-7,
                                   err_msg=jax.tree_util.keystr(path))


def test_loss_equals_transformers_networks_loaded_from_the_export(exported):
    """Generator MLM from DebertaV2ForMaskedLM, the samples redone as its argmax, RTD from
    DebertaV2Model + the exported head's weights, both losses in torch: the objective's total."""
    import torch
    import transformers
    from safetensors.numpy import load_file
    objective, batch, params, root = exported
    loss, metrics = jax.jit(lambda p: objective.loss(p, batch, jax.random.key(1),
                                                     deterministic=True))(params)
    ids, mask = (torch.as_tensor(batch[k]).long() for k in ("input_ids", "attention_mask"))
    positions = torch.as_tensor(batch["masked_positions"]).long()
    weights = torch.as_tensor(batch["masked_weights"])
    originals = torch.as_tensor(batch["masked_ids"]).long()
    generator = transformers.DebertaV2ForMaskedLM.from_pretrained(root / "generator").eval()
    discriminator, info = transformers.AutoModel.from_pretrained(root / "discriminator",
                                                                 output_loading_info=True)
    assert not info["missing_keys"] and all(k.startswith("mask_predictions.")
                                            for k in info["unexpected_keys"])
    head = {k: torch.as_tensor(v) for k, v in
            load_file(root / "discriminator" / "model.safetensors").items()
            if k.startswith("mask_predictions.")}
    with torch.no_grad():
        logits = generator(input_ids=ids, attention_mask=mask).logits
        at_masks = torch.gather(logits, 1, positions[..., None].expand(-1, -1, logits.shape[-1]))
        ce = torch.nn.functional.cross_entropy(at_masks.transpose(1, 2), originals,
                                               reduction="none")
        mlm = (ce * weights).sum() / weights.sum()
        sampled = at_masks.argmax(-1)
        corrupted = ids.clone()
        for b in range(len(ids)):
            real = weights[b] > 0
            corrupted[b, positions[b][real]] = sampled[b][real]
        replaced = torch.zeros_like(ids, dtype=torch.bool)
        for b in range(len(ids)):
            real = weights[b] > 0
            replaced[b, positions[b][real]] = sampled[b][real] != originals[b][real]
        hidden = discriminator(input_ids=corrupted, attention_mask=mask).last_hidden_state
        x = torch.nn.functional.gelu(hidden @ head["mask_predictions.dense.weight"].T
                                     + head["mask_predictions.dense.bias"])
        rtd_logits = (x @ head["mask_predictions.classifier.weight"].T
                      + head["mask_predictions.classifier.bias"])[..., 0]
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            rtd_logits, replaced.float(), reduction="none")
        rtd_loss = (bce * mask).sum() / mask.sum()
    assert float(metrics["mlm_loss"]) == pytest.approx(float(mlm), abs=1e-5)
    assert float(metrics["rtd_loss"]) == pytest.approx(float(rtd_loss), abs=1e-5)
    assert float(loss) == pytest.approx(float(mlm + 10.0 * rtd_loss), abs=1e-4)
    # The discriminator as flaxbert reloads it gives transformers' logits on the same input.
    model, disc_params = flaxbert.from_pretrained(root / "discriminator")
    ours = model.apply({"params": disc_params}, corrupted.numpy(), mask.numpy()).logits
    np.testing.assert_allclose(np.asarray(ours), rtd_logits.numpy(), atol=1e-4)


@pytest.mark.slow
def test_recipe_trains_through_the_cli_and_transformers_loads_its_export(tmp_path):
    """configs/deberta_v3_base.py:tiny (rtd + gdes) through `flaxbert pretrain`: the loss falls,
    the export's generator loads as DebertaV2ForMaskedLM and its discriminator as DebertaV2Model."""
    import transformers

    from flaxbert.cli import main
    from flaxbert.data.prepare import prepare
    from flaxbert.demo import stdlib_docstrings
    from flaxbert.tokenizer_training import train_tokenizer
    text = tmp_path / "docs.txt"
    text.write_text("\n\n".join(stdlib_docstrings(limit=300)) + "\n", encoding="utf-8")
    train_tokenizer([text], tmp_path / "tok", "wordpiece", 800)
    prepare([text], tmp_path / "data", tmp_path / "tok", mode="full-sentences",
            max_seq_length=64, num_shards=1, validation_fraction=0.05, workers=1)
    workdir = tmp_path / "run"
    assert main(["pretrain", "--config", f"{REPO / 'configs' / 'deberta_v3_base.py'}:tiny",
                 "--workdir", str(workdir), f"--config.data.train={tmp_path / 'data'}",
                 "--config.train.num_steps=40", "--config.train.global_batch_size=16",
                 "--config.train.log_every=1", "--config.optimizer.warmup_steps=3",
                 "--config.checkpoint.save_every=100", "--config.train.eval_batches=0",
                 "--config.train.progress_bar=False"]) == 0
    rows = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r and "eval_loss" not in r}
    first = np.mean([losses[s] for s in range(1, 6)])
    last = np.mean([losses[s] for s in range(36, 41)])
    print(f"deberta_v3_base.py:tiny (gdes): mean loss steps 1-5 {first:.3f}, 36-40 {last:.3f}")
    assert np.isfinite(last) and last < first - 0.3, (first, last)
    export = workdir / "export" / "step_40"
    _, info = transformers.DebertaV2ForMaskedLM.from_pretrained(export / "generator",
                                                                output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    _, info = transformers.DebertaV2Model.from_pretrained(export / "discriminator",
                                                          output_loading_info=True)
    assert not info["missing_keys"]
    assert transformers.AutoConfig.from_pretrained(export / "generator").num_hidden_layers == 1
