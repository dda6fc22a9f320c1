r"""`flaxbert compile`: the real train step compiled ahead of time for a TPU topology, on any
machine with libtpu installed (`pip install 'flaxbert[tpu]'`), to see whether a recipe fits a
pod before paying for one.

    flaxbert compile --config configs/bert_base.py:pod --topology v5e:16x16
    flaxbert compile --config flaxbert:deberta_v3_base:pod --topology v5p:8x8x4 --mesh 1,256,1
    flaxbert compile --config configs/roberta_base.py:pod --topology v5e:16x16 --mesh auto \
        --config.train.global_batch_size=2048 --json roberta.json

The Trainer is built on `jax.experimental.topologies` devices with a description of the data
(`--seq-len`, the model's vocabulary) instead of the data itself, and `Trainer.lower_train_step`
lowers its jitted step on abstract state and batch: no weight or batch is materialised. What is
printed comes from the compiled executable: compile time, per-chip argument / output /
temporary / generated-code bytes (`memory_analysis()`), whether their sum fits the chip's HBM
(or, when the compiler itself refuses for memory, by how much it misses, read from its
message), and FLOPs per step (flaxbert.flops' model FLOPs, and XLA's count per chip).
`--mesh auto` compiles candidate (data, fsdp, tensor) meshes, then heavier remat policies, and
keeps the first that fits.

Nothing here imports JAX at module level: `flaxbert --help` lists the command for free.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import time

log = logging.getLogger(__name__)

GIB = 2**30
# HBM per chip (GiB) by the chip kind in a topology name ("v5e:16x16" -> v5e).
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
# jax's device_kind of topology devices -> chip kind, for names that are not the kind itself.
DEVICE_KINDS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5": "v5p",
                "TPU v5p": "v5p", "TPU v6 lite": "v6e", "TPU v6e": "v6e"}
# Heavier remat policies `--mesh auto` falls back on (flaxbert.layers: lightest first).
REMAT_FALLBACKS = ("dots", "full")
TOPOLOGY_EXAMPLES = "v5e:2x2, v5e:16x16, v5p:8x8x4, v4:4x4x4, v6e:8x8"
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


# ----------------------------------------------------------------------------- topology

def topology_devices(name: str) -> list:
    """The devices of TPU topology `name` ("v5e:4x4"); ImportError without libtpu, one-line
    ValueError for a name libtpu does not know."""
    import importlib.util
    if importlib.util.find_spec("libtpu") is None:
        raise ImportError("flaxbert compile needs libtpu to compile for TPUs: "
                          "pip install 'flaxbert[tpu]'")
    # Compiling drives no chip, so libtpu's one-process-per-host lock (/tmp/libtpu_lockfile)
    # need not hold: without this, any other JAX process on the machine that probed libtpu
    # for its backend (a CPU training run) makes the topology call fail.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    if ":" not in name:
        raise ValueError(f"--topology {name!r}: expected KIND:SHAPE, e.g. {TOPOLOGY_EXAMPLES}")
    import jax
    from jax.experimental import topologies

    from flaxbert.quiet import captured_stderr

    def to_log(text):  # shown with `flaxbert -v`, not on every run
        if text.strip():
            log.info("libtpu start-up:\n%s", text.strip())
    try:
        # libtpu's start-up complains that this host is no TPU VM: true, and beside the point.
        with captured_stderr(to_log):
            return list(topologies.get_topology_desc(name, "tpu").devices)
    except (jax.errors.JaxRuntimeError, RuntimeError, ValueError) as e:
        reason = " ".join(str(e).split())
        raise ValueError(f"--topology {name!r}: libtpu refused it ({reason}); use KIND:SHAPE, "
                         f"e.g. {TOPOLOGY_EXAMPLES}") from None


def chip_kind(topology: str, devices) -> str | None:
    kind = topology.split(":", 1)[0].lower()
    return kind if kind in HBM_GIB else DEVICE_KINDS.get(devices[0].device_kind)


# ----------------------------------------------------------------------------- the compile

def _bytes(number: str, unit: str) -> int:
    return int(float(number) * _UNITS[unit.upper()[:1]])


def compiler_memory_shortfall(message: str) -> dict | None:
    """{"used_bytes", "hbm_bytes", "missing_bytes"} from XLA's out-of-memory refusal, or None
    when `message` is not one. libtpu words it "Ran out of memory on HBM, the total memory
    required for HLO temporaries (34.20G) exceeds available HBM (15.75G)." (what is needed
    beyond the arguments: the step misses by at least the difference), or, in other versions,
    "Used 20.50G of 15.75G hbm. Exceeded hbm capacity by 4.75G."."""
    needed = re.search(r"memory required for [^(]*\(([\d.]+)([KMGT]?)B?\) exceeds available "
                       r"HBM \(([\d.]+)([KMGT]?)B?\)", message)
    if needed:
        used, hbm = _bytes(*needed.group(1, 2)), _bytes(*needed.group(3, 4))
        return {"used_bytes": used, "hbm_bytes": hbm, "missing_bytes": used - hbm}
    used = re.search(r"Used ([\d.]+)([KMGT]?)B? of ([\d.]+)([KMGT]?)B? hbm", message)
    over = re.search(r"Exceeded hbm capacity by ([\d.]+)([KMGT]?)", message)
    if not used and not over:
        return None
    out = {}
    if used:
        out.update(used_bytes=_bytes(*used.group(1, 2)), hbm_bytes=_bytes(*used.group(3, 4)))
    if over:
        out["missing_bytes"] = _bytes(*over.group(1, 2))
    elif used:
        out["missing_bytes"] = out["used_bytes"] - out["hbm_bytes"]
    return out


@dataclasses.dataclass
class CompileResult:
    """What one compile of the train step says; `compiled` is the executable (None when the
    compiler refused)."""
    topology: str
    chips: int
    chip: str | None
    hbm_bytes: int | None
    mesh: dict
    model: str
    objective: str
    seq_len: int
    global_batch_size: int
    num_microbatches: int
    dtype: str
    scan_layers: bool
    remat_policy: str
    lower_s: float
    compile_s: float | None = None
    memory: dict | None = None  # per chip: argument, output, alias, temp, generated_code bytes
    per_chip_bytes: int | None = None
    fits: bool | None = None
    missing_bytes: int | None = None  # how far over HBM (from the compiler when it refused)
    model_flops_per_step: float | None = None
    xla_flops_per_chip: float | None = None
    error: str | None = None
    compiled: object = dataclasses.field(default=None, repr=False)

    def to_json(self) -> dict:
        # Not dataclasses.asdict: it would deep-copy the executable, which cannot be copied.
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "compiled"}


def memory_of(compiled) -> dict:
    """Per-chip bytes of `compiled.memory_analysis()`."""
    m = compiled.memory_analysis()
    return {"argument_bytes": int(m.argument_size_in_bytes),
            "output_bytes": int(m.output_size_in_bytes),
            "alias_bytes": int(m.alias_size_in_bytes),
            "temp_bytes": int(m.temp_size_in_bytes),
            "generated_code_bytes": int(m.generated_code_size_in_bytes)}


def per_chip_bytes(memory: dict) -> int:
    """HBM a chip holds while the step runs: arguments, outputs not aliased to a donated
    argument, temporaries and the program itself."""
    return (memory["argument_bytes"] + memory["output_bytes"] - memory["alias_bytes"]
            + memory["temp_bytes"] + memory["generated_code_bytes"])


def fit_verdict(used: int, hbm: int | None) -> tuple[bool | None, int | None]:
    """(fits, bytes missing) of `used` bytes against `hbm` (None: unknown chip, no verdict)."""
    if hbm is None:
        return None, None
    return used <= hbm, max(0, used - hbm)


def build_trainer(config, devices, seq_len: int):
    """The real Trainer on `devices`, for data of `seq_len` tokens described, not read."""
    from flaxbert.models import registry
    from flaxbert.training.objectives import OBJECTIVES
    from flaxbert.training.trainer import Trainer
    if "task" in config:
        raise ValueError("flaxbert compile takes pre-training recipes; this config has a task "
                         "block (fine-tuning)")
    model = registry.get_config(config.model)
    overrides = config.model_overrides.to_dict() if config.model_overrides else {}
    vocab = int(overrides.get("vocab_size", model.vocab_size))
    objective = OBJECTIVES.get(config.objective)
    manifest = {"max_seq_length": seq_len,
                "mode": getattr(objective, "pair_task", None) or "full-sentences",
                "tokenizer": {"vocab_size": vocab, "special_ids": {}, "all_special_ids": []}}
    return Trainer(config, "/nonexistent/flaxbert-compile", devices=devices, manifest=manifest)


def compile_train_step(config, topology: str, *, seq_len: int = 512, devices=None
                       ) -> CompileResult:
    """Build the Trainer for `config` on `topology`'s devices (or `devices`), lower and compile
    its train step. A compiler refusal for memory comes back as a result with fits=False and
    the shortfall; any other failure raises."""
    import jax

    from flaxbert.training.reporting import flops_per_sequence
    devices = topology_devices(topology) if devices is None else devices
    config = config.copy_and_resolve_references()
    if not config.data.train:
        config.data.train = "<flaxbert compile: no data read>"
    t0 = time.perf_counter()
    trainer = build_trainer(config, devices, seq_len)
    lowered = trainer.lower_train_step()
    chip = chip_kind(topology, devices)
    hbm = HBM_GIB[chip] * GIB if chip in HBM_GIB else None
    mc = trainer.model_config
    per_seq = flops_per_sequence(trainer)
    result = CompileResult(
        topology=topology, chips=len(devices), chip=chip, hbm_bytes=hbm,
        mesh=dict(trainer.mesh.shape), model=config.model, objective=config.objective,
        seq_len=seq_len, global_batch_size=config.train.global_batch_size,
        num_microbatches=config.train.num_microbatches, dtype=str(mc.dtype),
        scan_layers=bool(mc.scan_layers), remat_policy=str(mc.remat_policy),
        lower_s=time.perf_counter() - t0,
        model_flops_per_step=per_seq * config.train.global_batch_size if per_seq else None)
    t1 = time.perf_counter()
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        shortfall = compiler_memory_shortfall(str(e))
        if shortfall is None:
            raise
        result.compile_s = time.perf_counter() - t1
        result.fits, result.missing_bytes = False, shortfall.get("missing_bytes")
        result.per_chip_bytes = shortfall.get("used_bytes")
        result.hbm_bytes = shortfall.get("hbm_bytes", hbm)  # what the compiler could use
        result.error = " ".join(str(e).split())[:500]
        return result
    result.compile_s = time.perf_counter() - t1
    result.compiled = compiled
    result.memory = memory_of(compiled)
    result.per_chip_bytes = per_chip_bytes(result.memory)
    result.fits, result.missing_bytes = fit_verdict(result.per_chip_bytes, hbm)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one per program
    if cost and cost.get("flops"):
        result.xla_flops_per_chip = float(cost["flops"])
    return result


def mesh_candidates(chips: int, batch_rows: int) -> list[tuple[int, int, int]]:
    """(data, fsdp, tensor) meshes `--mesh auto` tries, cheapest communication first: pure
    data parallelism, FSDP over growing groups, then tensor parallelism of 2, 4 and 8 with
    FSDP over the rest; only meshes whose data x fsdp shards divide the microbatch's rows."""
    out = []
    for tensor in (1, 2, 4, 8):
        if chips % tensor:
            continue
        rest = chips // tensor
        fsdp = 1
        while fsdp <= rest:
            if rest % fsdp == 0 and batch_rows % rest == 0:
                out.append((rest // fsdp, fsdp, tensor))
            fsdp *= 2
    return list(dict.fromkeys(out))


def auto_compile(config, topology: str, *, seq_len: int, report=print) -> CompileResult:
    """Compile candidate meshes (then heavier remat policies) until one fits; the last
    result when none does."""
    devices = topology_devices(topology)
    rows = config.train.global_batch_size // config.train.num_microbatches
    current = (config.model_overrides.to_dict() if config.model_overrides else {}).get(
        "remat_policy") or _registered_remat(config)
    heavier = (REMAT_FALLBACKS[REMAT_FALLBACKS.index(current) + 1:]
               if current in REMAT_FALLBACKS else REMAT_FALLBACKS)
    policies = [current, *heavier]
    result = None
    meshes = mesh_candidates(len(devices), rows)
    if not meshes:
        raise ValueError(f"--mesh auto: no mesh of {len(devices)} chips divides the microbatch "
                         f"of {rows} rows (train.global_batch_size / train.num_microbatches)")
    for policy in policies:
        for data, fsdp, tensor in meshes:
            c = config.copy_and_resolve_references()
            c.mesh.data, c.mesh.fsdp, c.mesh.tensor = data, fsdp, tensor
            with c.unlocked():
                c.model_overrides.remat_policy = policy
            try:
                result = compile_train_step(c, topology, seq_len=seq_len, devices=devices)
            except ValueError as e:  # a mesh the sharding rules cannot use
                report(f"  mesh {data},{fsdp},{tensor} remat {policy}: skipped ({e})")
                continue
            report(f"  mesh {data},{fsdp},{tensor} remat {policy}: "
                   f"{_gib(result.per_chip_bytes)} per chip, "
                   f"{'fits' if result.fits else 'does not fit'}")
            if result.fits:
                return result
    if result is None:
        raise ValueError(f"--mesh auto: no candidate mesh of {len(devices)} chips could be "
                         "built for this config")
    return result


def _registered_remat(config) -> str:
    from flaxbert.models import registry
    return registry.get_config(config.model).remat_policy


# ----------------------------------------------------------------------------- report

def _gib(n) -> str:
    if n is None:
        return "?"
    return f"{n / GIB:.2f} GiB" if abs(n) >= GIB / 10 else f"{n / 2**20:.1f} MiB"


def format_report(r: CompileResult) -> str:
    hbm = f"{r.hbm_bytes / GIB:.0f} GiB HBM each" if r.hbm_bytes else "HBM unknown"
    mesh = " ".join(f"{k}={v}" for k, v in r.mesh.items())
    lines = [f"{r.model} ({r.objective}), {r.seq_len} tokens, global batch {r.global_batch_size}"
             f" in {r.num_microbatches} microbatch(es); {r.topology}: {r.chips} x {r.chip} "
             f"chips, {hbm}",
             f"mesh {mesh}; dtype {r.dtype}, scan_layers {r.scan_layers}, remat {r.remat_policy}",
             f"compile: {r.compile_s:.1f} s (building and lowering: {r.lower_s:.1f} s)"]
    if r.memory:
        m = r.memory
        lines.append(f"per chip: arguments {_gib(m['argument_bytes'])}, outputs "
                     f"{_gib(m['output_bytes'])} ({_gib(m['alias_bytes'])} aliased to donated "
                     f"arguments), temporaries {_gib(m['temp_bytes'])}, generated code "
                     f"{_gib(m['generated_code_bytes'])}; total {_gib(r.per_chip_bytes)}")
    if r.fits is None:
        lines.append(f"fits: unknown (no HBM size known for {r.chip}; known: "
                     f"{', '.join(f'{k} {v} GiB' for k, v in HBM_GIB.items())})")
    elif r.fits:
        lines.append(f"fits: yes, {_gib(r.per_chip_bytes)} of {_gib(r.hbm_bytes)} "
                     f"({_gib(r.hbm_bytes - r.per_chip_bytes)} free)")
    elif r.memory is None:
        lines.append(f"fits: no: the compiler refused, out of HBM ({_gib(r.per_chip_bytes)} "
                     f"needed of {_gib(r.hbm_bytes)} usable: misses by at least "
                     f"{_gib(r.missing_bytes)})")
    else:
        lines.append(f"fits: no: {_gib(r.per_chip_bytes)} of {_gib(r.hbm_bytes)}, misses by "
                     f"{_gib(r.missing_bytes)}")
    flops = (f"{r.model_flops_per_step:.3e} model FLOPs per step (flaxbert.flops)"
             if r.model_flops_per_step else "model FLOPs: no formula for this family")
    if r.xla_flops_per_chip:
        flops += f"; XLA counts {r.xla_flops_per_chip:.3e} per chip"
        if r.scan_layers or r.num_microbatches > 1:  # a while loop's body is counted once
            flops += " (a loop body once: scanned layers / microbatches make it a lower bound)"
    lines.append(flops)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the command

def compile_parser() -> argparse.ArgumentParser:
    from flaxbert.cli_help import RawDescriptionDefaultsFormatter
    p = argparse.ArgumentParser(prog="flaxbert compile", description=__doc__,
                                formatter_class=RawDescriptionDefaultsFormatter)
    p.add_argument("--config", required=True,
                   help="a pre-training recipe: FILE.py[:arg] or flaxbert:NAME[:arg]")
    p.add_argument("--topology", required=True,
                   help=f"TPU topology KIND:SHAPE, e.g. {TOPOLOGY_EXAMPLES}")
    p.add_argument("--mesh", default="",
                   help="DATA,FSDP,TENSOR (one may be -1), or 'auto' to try meshes and remat "
                        "policies until one fits (default: the config's mesh)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per sequence")
    p.add_argument("--json", default="", help="also write the result to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    return p


def parse_config(spec: str, overrides: list[str]):
    """(file, config) of `--config spec` with `--config.FIELD=VALUE` overrides applied (typed
    and checked by ml_collections, as `flaxbert pretrain` does)."""
    from absl import flags
    from ml_collections import config_flags

    from flaxbert.training.cli import _check_overrides, _load_config
    path, config = _load_config(spec)
    _check_overrides(overrides, config, path)
    fv = flags.FlagValues()
    argv = ["flaxbert compile", *overrides]
    holder = config_flags.DEFINE_config_dict("config", config, "the experiment config",
                                             flag_values=fv, sys_argv=argv)
    try:
        fv(argv)
    except flags.Error as e:
        raise ValueError(str(e)) from None
    return path, holder.value


def _parse_mesh(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    try:
        sizes = tuple(int(x) for x in parts)
    except ValueError:
        sizes = ()
    if len(sizes) != 3:
        raise ValueError(f"--mesh {text!r}: expected DATA,FSDP,TENSOR (e.g. 1,16,1) or auto")
    return sizes


def run_compile(argv: list[str]) -> CompileResult | None:
    parser = compile_parser()
    args, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if not re.match(r"-{1,2}(no)?config\.", a)]
    if unknown:
        raise ValueError(f"unexpected arguments: {' '.join(unknown)}")
    if args.seq_len < 1:
        raise ValueError(f"--seq-len {args.seq_len} must be >= 1")
    if args.json:
        from flaxbert.io import check_destination
        check_destination(args.json, args.overwrite, directory=False)  # before the long work
    path, config = parse_config(args.config, rest)
    from flaxbert.training.config import check_config
    if not config.data.train:
        config.data.train = "<flaxbert compile: no data read>"
    check_config(config, source=path)
    if args.mesh == "auto":
        print(f"--mesh auto on {args.topology}:", flush=True)
        result = auto_compile(config, args.topology, seq_len=args.seq_len,
                              report=lambda line: print(line, flush=True))
    else:
        if args.mesh:
            config.mesh.data, config.mesh.fsdp, config.mesh.tensor = _parse_mesh(args.mesh)
        result = compile_train_step(config, args.topology, seq_len=args.seq_len)
    print(format_report(result), flush=True)
    if args.json:
        from flaxbert.io import atomic_file
        with atomic_file(args.json, overwrite=args.overwrite) as tmp:
            tmp.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return result


def _command(args) -> None:
    run_compile(args.flags)


def add_compile_parser(commands) -> None:
    command = commands.add_parser(
        "compile", help="compile the train step for a TPU topology ahead of time (needs "
                        "libtpu): compile time, per-chip memory, whether it fits",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False, prefix_chars="\0")  # its flags (and --config.FIELD=...) are parsed here
    command.add_argument("flags", nargs=argparse.REMAINDER,
                         help="--config FILE[:arg] --topology KIND:SHAPE [--mesh D,F,T|auto] "
                              "[--seq-len N] [--json FILE] [--config.field=value ...]")
    command.set_defaults(run=_command)
