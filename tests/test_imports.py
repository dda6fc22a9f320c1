"""What each entry point imports: `import flaxbert` and `flaxbert --help` load neither JAX nor
TensorFlow (that is what keeps `--help` well under a second), and converting a checkpoint,
tokenizing or embedding never loads TensorFlow, torch or transformers (the optional extras stay
optional). Each case runs in a fresh interpreter and reads its sys.modules; nothing is timed."""
import json
import subprocess
import sys

import pytest

from conftest import TINY_HF

HEAVY = ("tensorflow", "tensorflow_datasets", "torch", "transformers", "jax", "flax", "orbax",
         "optax")


def loaded_after(code: str, cwd=None) -> set[str]:
    """The HEAVY top-level modules a fresh interpreter has loaded after running `code`."""
    script = (f"import json, sys\n{code}\n"
              f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_import_flaxbert_loads_no_framework():
    assert loaded_after("import flaxbert; flaxbert.__version__") == set()


def help_code(*argv) -> str:
    return (f"from flaxbert.cli import main\ntry:\n    main({list(argv)!r})\n"
            f"except SystemExit:\n    pass")


def test_help_loads_neither_jax_nor_tensorflow():
    for argv in (["--help"], ["embed", "--help"]):
        assert loaded_after(help_code(*argv)) == set(), argv
    # these list tasks and objectives from their registries, which are JAX code
    for argv in (["convert", "--help"], ["pretrain", "--help"]):
        loaded = loaded_after(help_code(*argv))
        assert not loaded & {"tensorflow", "tensorflow_datasets", "torch", "transformers"}, argv


def test_lazy_names_resolve_on_first_use_and_the_trainer_loads_no_tensorflow():
    """The Trainer imports TensorFlow only when it reads pre-training data."""
    loaded = loaded_after("import flaxbert\nassert 'masked-lm' in flaxbert.TASKS\n"
                          "assert flaxbert.count_params(flaxbert.create_model('bert-tiny')) > 0\n"
                          "import flaxbert.training.trainer, flaxbert.training.finetune")
    assert {"jax", "flax"} <= loaded
    assert not loaded & {"tensorflow", "tensorflow_datasets", "torch", "transformers"}


@pytest.fixture(scope="module")
def tiny_hf_dir(tmp_path_factory):
    import torch
    import transformers
    root = tmp_path_factory.mktemp("imports")
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(**TINY_HF)).save_pretrained(root / "hf")
    (root / "hf" / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(94))]))
    return root


def test_convert_tokenize_and_embed_load_no_tensorflow_or_torch(tiny_hf_dir):
    code = ("from flaxbert.cli import main\n"
            "assert main(['convert', 'hf', 'flax', '--to', 'flax']) == 0\n"
            "from flaxbert.tokenizer import Tokenizer\n"
            "Tokenizer.from_pretrained('hf')(['w1 w2 w3'])\n"
            "from flaxbert.inference import InferenceEngine\n"
            "InferenceEngine.from_pretrained('flax', buckets=(8,)).embed(['w1 w2'])")
    loaded = loaded_after(code, cwd=tiny_hf_dir)
    assert "jax" in loaded  # the check sees what is loaded
    assert not loaded & {"tensorflow", "tensorflow_datasets", "torch", "transformers"}

