"""ELECTRA's `init_from` for the generator + discriminator pair: a run starts from a pair export
(what an rtd run's export writes: generator/ and discriminator/) or from two directories
(init_from the discriminator's, objective_settings.init_from_generator the generator's), and a
directory that does not fit is one error line naming it and the parameter."""
import importlib.util
import json
from pathlib import Path

import jax
import numpy as np
import pytest

import flaxbert

REPO = Path(__file__).resolve().parent.parent
VOCAB = 99
MANIFEST = {"max_seq_length": 32, "mode": "full-sentences",
            "tokenizer": {"vocab_size": VOCAB, "special_ids": {"pad": 0},
                          "all_special_ids": [0, 1, 2, 3, 4]}}


def recipe(data="<synthetic>", **fields):
    spec = importlib.util.spec_from_file_location("electra_recipe",
                                                  REPO / "configs" / "electra_small.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("tiny")
    c.data.train = str(data)
    c.train.progress_bar, c.checkpoint.async_save = False, False
    for key, value in fields.items():
        node, *path = key.split(".")
        target = c[node]
        for p in path[:-1]:
            target = target[p]
        if path:
            target[path[-1]] = value
        else:
            c[node] = value
    return c


def trainer(c, workdir, manifest=MANIFEST):
    from flaxbert.training.trainer import Trainer
    return Trainer(c, workdir, manifest=manifest)


def assert_same(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                      err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An rtd pair's weights (moved off their init, as training would) written by the
    trainer's own export, as a run's end writes export/step_N."""
    root = tmp_path_factory.mktemp("rtd-pair")
    first = trainer(recipe(), root / "first")
    params = jax.device_get(first.init_state().params)
    rs = np.random.RandomState(0)
    params = jax.tree_util.tree_map(lambda x: x + rs.normal(0, 0.01, x.shape).astype(x.dtype),
                                    params)
    first.export(params, root / "export")
    return root, params


def test_a_run_starts_from_a_pair_export_or_two_directories(exported, tmp_path):
    root, params = exported
    pair = trainer(recipe(init_from=str(root / "export")), tmp_path / "pair")
    state = pair.init_state()
    assert int(state.step) == 0
    assert_same(jax.device_get(state.params), params)
    two = trainer(recipe(**{"init_from": str(root / "export" / "discriminator"),
                            "objective_settings.init_from_generator":
                                str(root / "export" / "generator")}), tmp_path / "two")
    assert_same(jax.device_get(two.init_state().params), params)
    # What transformers loads from the export is what the new run trains from.
    model, disc = flaxbert.from_pretrained(root / "export" / "discriminator")
    assert_same(disc, two.objective.export(params)[1][2])


def test_a_directory_that_does_not_fit_is_one_line_naming_it(exported, tmp_path):
    root, _ = exported
    wide = flaxbert.create_model("electra-tiny", "masked-lm", vocab_size=VOCAB, hidden_size=64,
                                 num_attention_heads=1, intermediate_size=128)
    flaxbert.save_pretrained(tmp_path / "wide", wide, flaxbert.init_params(wide), format="hf")
    c = recipe(**{"init_from": str(root / "export" / "discriminator"),
                  "objective_settings.init_from_generator": str(tmp_path / "wide")})
    with pytest.raises(ValueError) as error:
        trainer(c, tmp_path / "bad").init_state()
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"init_from_generator={tmp_path / 'wide'}: parameter ")
    # As wide as its embeddings (64), it has no projection to hidden_size; the run's (32) has.
    assert message.endswith("parameter backbone/embeddings_project/bias is missing there")
    with pytest.raises(ValueError, match=r"init_from=.*: objective 'rtd' starts a generator and "
                                         r"a discriminator; give a pair export"):
        trainer(recipe(init_from=str(root / "export" / "generator")),
                tmp_path / "half").init_state()


@pytest.mark.slow
def test_a_trained_rtd_run_continues_from_its_export(tmp_path):
    """The real thing: `flaxbert pretrain` of electra_small.py:tiny for 3 steps, then a second
    run with init_from=<its export>: step 0 of the second holds the exported weights."""
    from flaxbert.cli import main
    from flaxbert.data.prepare import prepare
    from flaxbert.demo import stdlib_docstrings
    from flaxbert.tokenizer_training import train_tokenizer
    text = tmp_path / "docs.txt"
    text.write_text("\n\n".join(stdlib_docstrings(limit=200)) + "\n", encoding="utf-8")
    train_tokenizer([text], tmp_path / "tok", "wordpiece", 600)
    prepare([text], tmp_path / "data", tmp_path / "tok", mode="full-sentences",
            max_seq_length=32, num_shards=1, validation_fraction=0.05, workers=1)
    args = ["--config", f"{REPO / 'configs' / 'electra_small.py'}:tiny",
            f"--config.data.train={tmp_path / 'data'}", "--config.train.num_steps=3",
            "--config.train.global_batch_size=4", "--config.optimizer.warmup_steps=1",
            "--config.train.eval_batches=0", "--config.train.progress_bar=False"]
    assert main(["pretrain", "--workdir", str(tmp_path / "first"), *args]) == 0
    export = tmp_path / "first" / "export" / "step_3"
    from flaxbert.training.trainer import restore_params
    _, step, trained = restore_params(tmp_path / "first")
    assert step == 3
    config = json.loads((tmp_path / "first" / "config.json").read_text())
    assert config["objective"] == "rtd"
    c = recipe(tmp_path / "data", init_from=str(export))
    state = trainer(c, tmp_path / "second", manifest=None).init_state()
    assert_same(jax.device_get(state.params), jax.device_get(trained))
