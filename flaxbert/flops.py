"""Model FLOPs per sequence, device peaks and MFU: an explicit formula a benchmark can print.

Counting convention (as in the Megatron-LM / PaLM MFU papers): a matmul of (m, k) by (k, n)
costs 2·m·k·n FLOPs; a backward pass costs twice its forward, so training = 3 × forward.
Element-wise work (softmax, activations, LayerNorm, biases) and embedding gathers are left
out, as are dropout, the loss and the optimizer update. With T = sequence length, H =
hidden_size, A = heads × head_dim (= H for BERT), I = intermediate_size, E = embedding width,
V = vocab_size, forward FLOPs of one sequence are

    layers       L_applied · 2·T·(4·H·A + 2·H·I)   q, k, v, out and the two FFN matmuls
    attention    L_applied · 2·2·T²·A              scores Q·Kᵀ and context P·V
    relative     L_applied · n_terms · (2·2·T·R·A + 2·R·H·A / batch_size)
                 DeBERTa's c2p / p2c terms (n_terms of them): each scores T queries against
                 the R = 2·attention_span relative embeddings (as transformers and flaxbert
                 compute them, then gather), and projects the R-row table once a step
    embed_proj   2·T·E·H                           ALBERT / ELECTRA / DeBERTa when E != H
    mlm_head     P·(2·H·E + 2·E·V)                 transform + tied decoder, on the P masked
                 positions decoded (masked_positions); 0 when None
    rtd_head     T·(2·H·H + 2·H)                   ELECTRA's discriminator head

L_applied counts applied layers, not parameter sets: ALBERT runs num_hidden_layers ×
inner_group_num layers whatever its sharing. So training is 6·N_matmul·T + 12·L·T²·A (+ the
other terms ×3), the familiar 6·N·D plus attention. The pooler (one H×H matmul on [CLS]) is
left out. XLA's `cost_analysis()` of a forward pass agrees to within a few percent (it also
counts element-wise FLOPs).
"""
from __future__ import annotations

from flaxbert.layers.config import EncoderConfig

# Dense bf16 peak FLOP/s (no sparsity), by substrings of jax's `device_kind`; first match wins.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),  # v5p reports itself as "TPU v5"
    ("TPU v6 lite", 918e12),
    ("TPU v6e", 918e12),
)


def _check(config, seq_len: int, masked_positions, batch_size: int) -> None:
    if not isinstance(config, EncoderConfig):
        raise TypeError(f"config must be an EncoderConfig, got {type(config).__name__}")
    if hasattr(config, "mem_len"):  # XLNet: two-stream relative attention, not this formula
        raise ValueError(f"{type(config).__name__}: the FLOPs formula covers BERT-style encoders "
                         "(BERT, RoBERTa, ALBERT, ELECTRA, DistilBERT, DeBERTa), not XLNet")
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if masked_positions is not None and (isinstance(masked_positions, bool) or
                                         not isinstance(masked_positions, int) or
                                         not 0 <= masked_positions <= seq_len):
        raise ValueError(f"masked_positions must be an int in [0, seq_len={seq_len}] or None, "
                         f"got {masked_positions!r}")


def applied_layers(config: EncoderConfig) -> int:
    """Layers a forward pass runs (ALBERT: each of num_hidden_layers runs a group of
    inner_group_num layers)."""
    return config.num_hidden_layers * getattr(config, "inner_group_num", 1)


def forward_flops_breakdown(config: EncoderConfig, seq_len: int, *,
                            masked_positions: int | None = None, rtd_head: bool = False,
                            batch_size: int = 1) -> dict[str, float]:
    """Forward FLOPs of one sequence, term by term (see the module docstring)."""
    _check(config, seq_len, masked_positions, batch_size)
    t, h, i = seq_len, config.hidden_size, config.intermediate_size
    a = config.num_attention_heads * config.head_dim
    e, v = config.embedding_width, config.vocab_size
    layers = applied_layers(config)
    terms = {
        "layers": layers * 2 * t * (4 * h * a + 2 * h * i),
        "attention": layers * 2 * 2 * t * t * a,
        "relative": 0.0,
        "embed_proj": 2 * t * e * h if e != h else 0.0,
        "mlm_head": (masked_positions or 0) * (2 * h * e + 2 * e * v),
        "rtd_head": t * (2 * h * h + 2 * h) if rtd_head else 0.0,
    }
    pos_terms = len(getattr(config, "pos_att_type", ())) \
        if getattr(config, "relative_attention", False) else 0
    if pos_terms:
        r = 2 * config.attention_span
        terms["relative"] = layers * pos_terms * (2 * 2 * t * r * a + 2 * r * h * a / batch_size)
    return {k: float(x) for k, x in terms.items()}


def inference_flops_per_sequence(config: EncoderConfig, seq_len: int, *,
                                 masked_positions: int | None = None,
                                 batch_size: int = 1) -> float:
    """Forward FLOPs of one sequence of `seq_len` tokens; `masked_positions` adds the MLM head
    on that many positions; `batch_size` amortises per-step terms (DeBERTa's table projection)."""
    return sum(forward_flops_breakdown(config, seq_len, masked_positions=masked_positions,
                                       batch_size=batch_size).values())


def training_flops_per_sequence(config: EncoderConfig, seq_len: int, *,
                                masked_positions: int | None = None,
                                batch_size: int = 1) -> float:
    """Forward + backward FLOPs of one sequence: 3 × `inference_flops_per_sequence`."""
    return 3 * inference_flops_per_sequence(config, seq_len, masked_positions=masked_positions,
                                            batch_size=batch_size)


def electra_training_flops_per_sequence(generator: EncoderConfig, discriminator: EncoderConfig,
                                        seq_len: int, *, masked_positions: int,
                                        batch_size: int = 1) -> float:
    """ELECTRA's replaced-token detection step: the generator (MLM head on the masked
    positions) plus the discriminator (its per-token head on every position), both trained."""
    if masked_positions is None:
        raise ValueError("ELECTRA's generator decodes the masked positions: pass masked_positions")
    gen = forward_flops_breakdown(generator, seq_len, masked_positions=masked_positions,
                                  batch_size=batch_size)
    disc = forward_flops_breakdown(discriminator, seq_len, rtd_head=True, batch_size=batch_size)
    return 3 * (sum(gen.values()) + sum(disc.values()))


def describe_formula(config: EncoderConfig | None = None, seq_len: int | None = None, *,
                     masked_positions: int | None = None, batch_size: int = 1) -> str:
    """The counting formula as text; with a config and seq_len, also its terms' values."""
    lines = [
        "model FLOPs/sequence: training = 3 x forward (backward = 2 x forward); matmuls only, "
        "2 FLOPs per multiply-add; no element-wise ops, embedding gathers, pooler, loss, optimizer",
        "forward = L*2T(4HA + 2HI)  [layer matmuls]",
        "        + L*4T^2*A  [attention scores + context]",
        "        + L*n_rel*(4T*R*A + 2R*H*A/batch)  [DeBERTa c2p/p2c, R = 2*attention_span]",
        "        + 2T*E*H if E != H  [embedding projection]",
        "        + P*(2HE + 2EV)  [MLM head on P masked positions]",
        "  L = applied layers (ALBERT: num_hidden_layers*inner_group_num), T = tokens, "
        "H = hidden, A = heads*head_dim, I = intermediate, E = embedding width, V = vocab",
    ]
    if config is not None and seq_len is not None:
        terms = forward_flops_breakdown(config, seq_len, masked_positions=masked_positions,
                                        batch_size=batch_size)
        shown = ", ".join(f"{k} {x:.3e}" for k, x in terms.items() if x)
        lines.append(f"  this model at T={seq_len}: forward {sum(terms.values()):.3e} ({shown}); "
                     f"training {3 * sum(terms.values()):.3e}")
    return "\n".join(lines)


def peak_flops(device) -> float | None:
    """Dense bf16 peak FLOP/s of a jax Device (or a device_kind string); None for CPUs and
    unknown kinds."""
    kind = device if isinstance(device, str) else getattr(device, "device_kind", "")
    for name, peak in PEAK_BF16_FLOPS:
        if name.lower() in kind.lower():
            return peak
    return None


def mfu(flops_per_step: float, step_seconds: float, device_peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak (None when the peak is unknown).
    For several devices pass the summed peak."""
    if flops_per_step < 0 or step_seconds <= 0:
        raise ValueError(f"need flops_per_step >= 0 and step_seconds > 0, got {flops_per_step} "
                         f"and {step_seconds}")
    if device_peak is None:
        return None
    if device_peak <= 0:
        raise ValueError(f"device_peak must be positive, got {device_peak}")
    return flops_per_step / step_seconds / device_peak
