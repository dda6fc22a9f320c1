"""Sharding rules that divide at every size (flaxbert.layers.sharding): dimensions their mesh axes
do not divide are replicated, or refused by name; the vocabulary is padded for tensor
parallelism without changing a logit, a loss or an exported byte; the mesh follows the torus on
TPU and is the devices in order on CPU."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec

from conftest import TINY_HF, run_on_8_cpu_devices, token_batch
from flaxbert.layers import sharding


def _mesh(data, fsdp, tensor):
    return AbstractMesh((data, fsdp, tensor), sharding.MESH_AXES)


def test_a_dimension_keeps_only_the_mesh_axes_that_divide_it():
    mesh = _mesh(2, 4, 8)
    rules = sharding.LOGICAL_AXIS_RULES
    # BERT-base's LayerNorm scale: 768 divides fsdp=4; unpadded vocabulary 30,522 not tensor=8.
    spec, notes = sharding.fit_spec(("embed",), (768,), mesh, rules, what="scale")
    assert spec == PartitionSpec("fsdp") and notes == []
    spec, notes = sharding.fit_spec(("vocab", "embed"), (30522, 768), mesh, rules, what="table")
    assert spec == PartitionSpec(None, "fsdp")
    assert len(notes) == 1 and "table" in notes[0] and "30522" in notes[0] and "replicated" in notes[0]
    # A batch of 6 over ("data", "fsdp") = 2 x 4: the data split divides, the fsdp one does not.
    spec, notes = sharding.fit_spec(("act_batch", None), (6, 5), mesh, rules)
    assert spec == PartitionSpec("data", None) and "sharded over data only" in notes[0]
    spec, _ = sharding.fit_spec(("act_batch", None), (16, 5), mesh, rules)
    assert spec == PartitionSpec(("data", "fsdp"), None)


def _tiny_abstract(**fields):
    import flaxbert
    model = flaxbert.create_model("bert-tiny", "masked-lm", **fields)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), **model.dummy_inputs()))


def test_what_cannot_be_laid_out_is_named_with_its_shape_rule_and_mesh():
    abstract = _tiny_abstract(hidden_size=36, num_attention_heads=2, intermediate_size=50,
                              vocab_size=99, vocab_pad_multiple=512)
    mesh = _mesh(1, 2, 4)
    shardings, notes = sharding.check_layout(abstract, mesh)
    params = shardings["params"]
    table = params["backbone"]["embeddings"]["word_embeddings"]["embedding"]
    assert table.spec == PartitionSpec("tensor", "fsdp")  # 512 padded rows split 4 ways
    query = params["backbone"]["encoder"]["layers_0"]["attention"]["query"]["kernel"]
    assert query.spec == PartitionSpec("fsdp", None, None)  # 2 heads stay whole on tensor=4
    assert any("query/kernel" in n and "(36, 2, 18)" in n for n in notes)
    with pytest.raises(ValueError) as error:
        sharding.check_layout(abstract, mesh, indivisible="error")
    message = str(error.value)
    for part in ("params/backbone/encoder/layers_0/attention/query/kernel", "(36, 2, 18)",
                 "'heads' -> 'tensor'", "mesh (data=1, fsdp=2, tensor=4)"):
        assert part in message, (part, message)
    # User rules naming a mesh axis that is not there cannot be laid out in any mode.
    rules = (("mlp", "model"),) + sharding.LOGICAL_AXIS_RULES
    with pytest.raises(ValueError, match=r"mlp/wi/bias of shape \(50,\): rule 'mlp' -> 'model'.*mesh \(data=1"):
        sharding.check_layout(abstract, mesh, rules)


def test_make_mesh_on_cpu_is_the_devices_in_order():
    mesh = sharding.make_mesh(-1, 1, 1)
    assert dict(mesh.shape) == {"data": jax.device_count(), "fsdp": 1, "tensor": 1}
    assert list(mesh.devices.flat) == jax.devices()
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(ValueError, match="needs 2 devices"):
        sharding.make_mesh(1, 2, 1, devices=jax.devices()[:1])


class _FakeChip:
    """What mesh_utils reads off a TPU device: id, kind, torus coordinates."""

    platform, device_kind, core_on_chip, slice_index, process_index = "tpu", "TPU v4", 0, 0, 0

    def __init__(self, id, coords):
        self.id, self.coords = id, coords

    def __repr__(self):
        return f"chip{self.id}{self.coords}"


def test_make_mesh_on_a_tpu_torus_puts_tensor_and_fsdp_on_neighbours():
    # A 4x4x4 v4 slice listed in a shuffled order: a reshape would scatter each tensor group.
    coords = [(x, y, z) for z in range(4) for y in range(4) for x in range(4)]
    order = np.random.RandomState(0).permutation(len(coords))
    chips = [_FakeChip(i, coords[j]) for i, j in enumerate(order)]
    mesh = sharding.make_mesh(4, 4, 4, devices=chips)
    grid = mesh.devices
    assert dict(mesh.shape) == {"data": 4, "fsdp": 4, "tensor": 4}
    assert sorted(d.id for d in grid.flat) == list(range(64))

    def one_ring(group):  # the chips of a group differ in exactly one torus coordinate
        varying = [k for k in range(3) if len({c.coords[k] for c in group}) > 1]
        return len(varying) == 1

    assert all(one_ring(grid[d, f, :]) for d in range(4) for f in range(4))
    assert all(one_ring(grid[d, :, t]) for d in range(4) for t in range(4))
    plain = np.asarray(chips, dtype=object).reshape(4, 4, 4)
    assert not all(one_ring(plain[d, f, :]) for d in range(4) for f in range(4))


@pytest.fixture(scope="module")
def hf_mlm_dir(tmp_path_factory):
    import torch
    import transformers
    torch.manual_seed(0)
    config = transformers.BertConfig(**TINY_HF, attn_implementation="eager")
    model = transformers.BertForMaskedLM(config).eval()
    path = tmp_path_factory.mktemp("padded") / "hf"
    model.save_pretrained(path)
    return path


def test_a_padded_vocabulary_changes_no_logit_loss_or_exported_byte(hf_mlm_dir, tmp_path):
    import safetensors.numpy
    import torch
    import transformers

    import flaxbert
    from flaxbert.training.losses import masked_lm_loss
    ids, mask, types_ = token_batch()
    plain, plain_params = flaxbert.from_pretrained(hf_mlm_dir)
    padded, padded_params = flaxbert.from_pretrained(hf_mlm_dir, vocab_pad_multiple=128)
    table = padded_params["backbone"]["embeddings"]["word_embeddings"]["embedding"]
    assert table.shape == (128, TINY_HF["hidden_size"]) and not np.any(table[TINY_HF["vocab_size"]:])
    assert padded_params["mlm_head"]["bias"].shape == (128,)
    ref = plain.apply({"params": plain_params}, ids, mask, types_).logits
    out = padded.apply({"params": padded_params}, ids, mask, types_).logits
    assert out.shape == ref.shape == ids.shape + (TINY_HF["vocab_size"],)
    # Equal up to float rounding: the (V, E) matmul is blocked differently at 128 rows than 99.
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=0, atol=1e-6)
    weights = mask.astype(np.float32)
    np.testing.assert_allclose(float(masked_lm_loss(out, ids, weights)[0]),
                               float(masked_lm_loss(ref, ids, weights)[0]), rtol=1e-6)

    flaxbert.save_pretrained(tmp_path / "export", padded, padded_params)
    original = safetensors.numpy.load_file(hf_mlm_dir / "model.safetensors")
    exported = safetensors.numpy.load_file(tmp_path / "export" / "model.safetensors")
    for key, value in exported.items():
        np.testing.assert_array_equal(value, original[key], err_msg=key)
    assert "vocab_pad_multiple" not in json.loads((tmp_path / "export" / "config.json").read_text())
    torch_model = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "export").eval()
    with torch.no_grad():
        theirs = torch_model(torch.tensor(ids), torch.tensor(mask), torch.tensor(types_)).logits
    np.testing.assert_allclose(theirs.numpy(), np.asarray(out), atol=1e-5)
    # Under jit (where ids cannot be checked) an id in the padding rows is no token: it looks up
    # NaN, as any id past the vocabulary does.
    bad = jax.jit(lambda i: padded.apply({"params": padded_params}, i, mask, types_).logits)(
        jnp.asarray(ids).at[0, 1].set(100))
    assert np.isnan(np.asarray(bad[0])).any() and not np.isnan(np.asarray(bad[1])).any()


TRAINER_SCRIPT = r"""
import json
import jax, numpy as np
import ml_collections
from flaxbert.training.config import default_config
from flaxbert.training.trainer import Trainer

def config(mesh, **mesh_fields):
    c = default_config()
    c.model, c.objective, c.vocab_from_data = "bert-tiny", "mlm", False
    # Widths that divide by neither 8 nor 4 (nor 2): hidden 35, 5 heads, 50 units, 99 tokens.
    c.model_overrides = ml_collections.ConfigDict(dict(
        hidden_size=35, num_attention_heads=5, intermediate_size=50, vocab_size=99,
        max_position_embeddings=32, num_hidden_layers=1))
    c.data.train, c.data.max_predictions_per_seq = "<synthetic>", 4
    c.train.global_batch_size, c.train.num_steps, c.optimizer.warmup_steps = 8, 2, 1
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    for k, v in mesh_fields.items():
        c.mesh[k] = v
    return c

manifest = {"max_seq_length": 16, "mode": "bench", "tokenizer": {"vocab_size": 99, "special_ids": {}}}
rs = np.random.RandomState(0)
ids = rs.randint(5, 99, (8, 16)).astype(np.int32)
pos = np.sort(np.stack([rs.choice(np.arange(1, 16), 4, replace=False) for _ in range(8)]), 1)
batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids),
         "masked_positions": pos.astype(np.int32),
         "masked_ids": np.take_along_axis(ids, pos, 1), "masked_weights": np.ones((8, 4), np.float32)}
out = {}
for mesh in [(1, 1, 1)] + MESHES:
    mesh = tuple(mesh)
    devices = jax.devices()[:int(np.prod(mesh))]
    trainer = Trainer(config(mesh), "/tmp/unused", devices=devices, manifest=manifest)
    state = trainer.init_state()
    losses = []
    for _ in range(2):
        state, metrics = trainer.train_step(state, batch)
        losses.append(float(metrics["loss"]))
    p = state.params["backbone"]
    specs = {"table": p["embeddings"]["word_embeddings"]["embedding"],
             "scale": p["embeddings"]["norm"]["scale"],
             "query": p["encoder"]["layers_0"]["attention"]["query"]["kernel"],
             "wi": p["encoder"]["layers_0"]["mlp"]["wi"]["kernel"]}
    out[str(mesh)] = {"losses": losses, "mesh": dict(trainer.mesh.shape),
                      "devices": sorted(d.id for d in trainer.mesh.devices.flat),
                      "pad": trainer.model_config.vocab_pad_multiple,
                      **{k: [list(v.shape), list(v.sharding.spec)] for k, v in specs.items()}}
try:
    Trainer(config((1, 2, 4), indivisible="error"), "/tmp/unused", manifest=manifest)
except ValueError as e:
    out["error"] = str(e)
print(json.dumps(out))
"""


def _run_trainer_on(meshes) -> tuple[dict, dict]:
    """The script's results on `meshes` (8 CPU devices) and its 1-device reference."""
    out = run_on_8_cpu_devices(TRAINER_SCRIPT.replace("MESHES", json.dumps(meshes)))
    out = json.loads(out.strip().splitlines()[-1])
    reference = out.pop("(1, 1, 1)")
    assert reference["pad"] == 0 and reference["table"][0] == [99, 35]
    for mesh, got in out.items():
        if mesh != "error":
            np.testing.assert_allclose(got["losses"], reference["losses"], atol=1e-5, err_msg=mesh)
    return out, reference


def test_the_trainer_steps_where_no_width_divides_its_tensor_and_fsdp_axes():
    """A tiny BERT whose widths divide by neither 2 nor 4 builds and steps on a (1,2,4) mesh of
    8 CPU devices with the 1-device losses (the vocabulary padded to 512 rows, split 4 ways, the
    rest replicated where it does not divide); mesh.indivisible='error' names what would need
    an uneven split."""
    out, _ = _run_trainer_on([(1, 2, 4)])
    error = out.pop("error")
    for part in ("mesh.indivisible='error'", "params/backbone/embeddings/norm/bias of shape (35,)",
                 "'embed' -> 'fsdp'", "fsdp=2", "mesh (data=1, fsdp=2, tensor=4)"):
        assert part in error, (part, error)
    tp = out["(1, 2, 4)"]
    assert tp["mesh"] == {"data": 1, "fsdp": 2, "tensor": 4} and tp["devices"] == list(range(8))
    assert tp["pad"] == 512 and tp["table"] == [[512, 35], ["tensor", None]]
    assert tp["scale"] == [[35], [None]] and tp["query"] == [[35, 5, 7], [None, None, None]]
    assert tp["wi"] == [[35, 50], [None, None]]


@pytest.mark.slow
def test_the_trainer_steps_with_fsdp_over_8_devices_that_divide_no_width():
    """FSDP over 8 devices (issue 14: LayerNorm scales of 768 on fsdp=512): every 35-wide
    parameter is replicated, the step runs and gives the 1-device losses."""
    out, _ = _run_trainer_on([(1, 8, 1), (2, 2, 2)])
    assert out["(1, 8, 1)"]["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    assert out["(1, 8, 1)"]["scale"] == [[35], [None]]
    assert out["(1, 8, 1)"]["pad"] == 0 and out["(2, 2, 2)"]["pad"] == 256
