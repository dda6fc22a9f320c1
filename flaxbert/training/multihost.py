"""Joining a multi-process run: `flaxbert pretrain --multihost` on a TPU slice or anywhere else.

On a Cloud TPU VM slice `jax.distributed.initialize()` finds everything itself (the TPU
metadata server names the hosts), as it does under Slurm or Open MPI. Anywhere else (several
GPU machines, or several CPU processes on one machine, as tests/test_multihost.py runs them)
three things must be given, by flag or by environment variable:

    --coordinator_address HOST:PORT   JAX_COORDINATOR_ADDRESS (read by JAX itself): process 0's
                                      address and a free port; process 0 serves there
    --num_processes N                 JAX_NUM_PROCESSES (ours: JAX reads no such variable)
    --process_id I                    JAX_PROCESS_ID (ours), 0 .. N-1

On CPU, collectives between processes go through gloo over TCP, JAX's default
(`jax_cpu_collectives_implementation`); no setting is needed.

A process that dies (kill -9, a lost host) is noticed by the others: a collective with it fails
at once when its sockets close (gloo aborts the process), or, if it hangs instead, JAX's
coordination service misses its heartbeat for `--heartbeat_timeout` seconds and terminates the
others. Either way every process exits with an error and none waits forever; rerunning the same
commands resumes from the last checkpoint they all finished. A SIGTERM (preemption) is caught
by the preemption notifier `jax.distributed.initialize` installs, and the Trainer asks Orbax's
`reached_preemption` each step, which answers on every process at the same step: they save
there together and exit.
"""
from __future__ import annotations

import os

ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
       "process_id": "JAX_PROCESS_ID"}


def distributed_settings(coordinator_address: str | None = None,
                         num_processes: int | None = None, process_id: int | None = None,
                         environ=os.environ) -> dict:
    """The given settings, each missing one from its environment variable (ENV); all None
    means "let JAX detect the cluster" (TPU, Slurm, Open MPI). Bad values raise one ValueError
    naming the flag or variable."""
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
             "process_id": process_id}
    settings = {}
    for name, value in given.items():
        source = f"--{name}"
        if value is None and environ.get(ENV[name]):
            value, source = environ[ENV[name]], f"${ENV[name]}"
        if value is not None and name != "coordinator_address":
            try:
                value = int(value)
            except ValueError:
                raise ValueError(f"{source}={value!r}: not an integer") from None
        settings[name] = (value, source)
    address, _ = settings["coordinator_address"]
    if address is not None and (":" not in address or not address.rsplit(":", 1)[1].isdigit()):
        raise ValueError(f"{settings['coordinator_address'][1]}={address!r}: expected HOST:PORT")
    count, count_source = settings["num_processes"]
    index, index_source = settings["process_id"]
    if count is not None and count < 1:
        raise ValueError(f"{count_source}={count}: must be at least 1")
    if index is not None and (index < 0 or (count is not None and index >= count)):
        raise ValueError(f"{index_source}={index}: must be in 0 .. num_processes - 1 "
                         f"({count_source}={count})")
    values = {k: v for k, (v, _) in settings.items()}
    if (count is not None or index is not None) and None in values.values():
        # With only an address JAX may still detect the rest (Slurm, Open MPI); once a count
        # or an id is given, the run is set up by hand and needs all three.
        missing = [f"--{k} (or ${ENV[k]})" for k, v in values.items() if v is None]
        raise ValueError(f"--multihost: {', '.join(missing)} must be given too "
                         f"({', '.join(f'{k}={v}' for k, v in values.items() if v is not None)})")
    return values


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, heartbeat_timeout: int = 100) -> None:
    """`jax.distributed.initialize` with `distributed_settings`; call before anything touches a
    JAX device."""
    import jax
    settings = distributed_settings(coordinator_address, num_processes, process_id)
    jax.distributed.initialize(**settings, heartbeat_timeout_seconds=heartbeat_timeout)
