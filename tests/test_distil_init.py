"""DistilBERT initialised from its teacher inside `pretrain` (Sanh et al. 2019): with
objective_settings.init_student_from_teacher (configs/distilbert_base.py sets it), the train
state a run starts from holds the teacher directory's embeddings, MLM head and every second
layer (or the layers student_layers names)."""
import importlib.util
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


def recipe(teacher, **settings):
    spec = importlib.util.spec_from_file_location("distil_recipe",
                                                  REPO / "configs" / "distilbert_base.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("tiny")
    c.data.train = "<synthetic>"  # the manifest stands in for prepared data
    c.model_overrides.vocab_size = VOCAB
    c.objective_settings.teacher = str(teacher)
    c.objective_settings.teacher_overrides = {}
    for key, value in settings.items():
        c.objective_settings[key] = value
    return c


def started(c, workdir):
    from flaxbert.training.trainer import Trainer
    return jax.device_get(Trainer(c, workdir, manifest=MANIFEST).init_state().params)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A 4-layer BERT masked LM saved as a transformers directory (what a real run points at)."""
    root = tmp_path_factory.mktemp("distil-teacher")
    model = flaxbert.create_model("bert-tiny", "masked-lm", vocab_size=VOCAB, num_hidden_layers=4)
    params = flaxbert.init_params(model, 3)
    flaxbert.save_pretrained(root / "teacher", model, params, format="hf")
    return root / "teacher", jax.device_get(params)


def assert_same(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                      err_msg=jax.tree_util.keystr(path))


def test_recipe_starts_the_student_from_every_second_teacher_layer(teacher, tmp_path):
    directory, t = teacher
    c = recipe(directory)
    assert c.objective_settings.init_student_from_teacher  # the recipe asks for it
    s = started(c, tmp_path / "run")
    emb = {k: v for k, v in t["backbone"]["embeddings"].items() if k != "token_type_embeddings"}
    assert_same(s["backbone"]["embeddings"], emb)  # DistilBERT has no token types
    assert sorted(s["backbone"]["encoder"]) == ["layers_0", "layers_1"]
    assert_same(s["backbone"]["encoder"]["layers_0"], t["backbone"]["encoder"]["layers_0"])
    assert_same(s["backbone"]["encoder"]["layers_1"], t["backbone"]["encoder"]["layers_2"])
    assert_same(s["mlm_head"], t["mlm_head"])


def test_chosen_layers_random_init_and_a_mismatch(teacher, tmp_path):
    directory, t = teacher
    s = started(recipe(directory, student_layers=(1, 3)), tmp_path / "chosen")
    assert_same(s["backbone"]["encoder"]["layers_0"], t["backbone"]["encoder"]["layers_1"])
    assert_same(s["backbone"]["encoder"]["layers_1"], t["backbone"]["encoder"]["layers_3"])
    # Without the setting the student is a random init, not the teacher's weights.
    random = started(recipe(directory, init_student_from_teacher=False), tmp_path / "random")
    assert not np.array_equal(
        np.asarray(random["backbone"]["encoder"]["layers_0"]["attention"]["query"]["kernel"]),
        np.asarray(t["backbone"]["encoder"]["layers_0"]["attention"]["query"]["kernel"]))
    # One teacher layer cannot fill a 2-layer student: one line naming the setting and parameter.
    with pytest.raises(ValueError) as error:
        started(recipe(directory, student_layers=(2,)), tmp_path / "short")
    message = str(error.value)
    assert "\n" not in message and "init_student_from_teacher" in message
    assert "layers [2]" in message and "backbone/encoder/layers_1/" in message
