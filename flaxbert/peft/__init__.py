"""Parameter-efficient fine-tuning: which weights train, their optimizer, their own files, and
folding LoRA back into a plain model. The layers themselves are flaxbert.layers.peft, chosen by
config fields (peft="lora" | "houlsby" | "pfeiffer", lora_rank, lora_alpha, lora_targets,
adapter_size, ...).

    model = flaxbert.create_model("bert-base-uncased", "sequence-classification", peft="lora")
    tx = flaxbert.peft.freeze(optax.adamw(1e-4), model.config)   # frozen leaves: no state
    flaxbert.peft.save_peft("run/lora", model, params)           # adapter + head only, small
    model, params = flaxbert.peft.load_peft("run/lora", "path/to/base")
    plain, plain_params = flaxbert.peft.merge_lora(model, params)  # save_pretrained exports it
"""
from flaxbert.peft.files import load_peft, merge_lora, save_peft  # noqa: F401
from flaxbert.peft.freezing import (freeze, optimizer_state_bytes, trainable_count,  # noqa: F401
                                    trainable_mask)
