"""tf.distribute strategies in the Model Garden manner, and a local multi-worker launcher
(TensorFlow; the names are re-exported by `keras_brt.distribute`).

    strategy = keras_brt.distribute.get_strategy("mirrored")
    with keras_brt.distribute.strategy_scope(strategy):
        lm = keras_brt.models.BlockRecurrentTransformerCausalLM.from_preset("tiny_rec_fixed_skip")
        lm.compile(jit_compile=True)   # XLA per replica, see keras_brt.distribute.replica_xla
    lm.fit(lane_dataset_with_the_global_batch, ...)

The carried lanes work under every strategy: each replica carries the rows of its
own lanes (see `keras_brt.distribute.replicas`), so a 2-replica run computes exactly
what one device computes on the same global batch.

Multi-worker: every worker runs the same program with its own `TF_CONFIG`
(`launch_local_workers` does that on one machine, for tests and tries); on
several hosts, set `TF_CONFIG` on each (see docs/distribution.md) and use
`get_strategy("multi_worker")`.
"""

import json
import os
import socket
import subprocess

import tensorflow as tf

from keras_brt.distribute.replicas import strategy_scope  # noqa: F401  (re-exported)

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")


def get_strategy(name="auto", tpu=None, devices=None, tpu_timeout=30.0):
    """Returns a `tf.distribute.Strategy` by name.

    Args:
        name: `"auto"` (TPU if `tpu` is given, multi-worker if `TF_CONFIG`
            names several workers, mirrored over several GPUs, else one
            device), `"one_device"`, `"mirrored"`, `"multi_worker"` or `"tpu"`.
        tpu: TPU name or address for `TPUClusterResolver` (`"local"` on a
            Cloud TPU VM).
        devices: devices for `"mirrored"` / `"one_device"` (default: all GPUs,
            or the CPU).
        tpu_timeout: seconds to wait for the TPU's address to answer before
            giving up with an error (an unreachable TPU would otherwise hang).

    Returns:
        The strategy. Build and compile the model inside `strategy.scope()`.
    """
    if name not in STRATEGIES:
        raise ValueError(f"`name` must be one of {STRATEGIES}. Received: name={name!r}")
    if name == "auto":
        if tpu:
            name = "tpu"
        elif _tf_config_workers() > 1:
            name = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "one_device"
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        device = (devices or [gpus[0].name if gpus else "/cpu:0"])[0]
        return tf.distribute.OneDeviceStrategy(device)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        if _tf_config_workers() < 1:
            raise ValueError(
                "`multi_worker` needs TF_CONFIG to describe the cluster (see the "
                f"multi-host recipe in docs/distribution.md, or launch_local_workers). Received: TF_CONFIG="
                f"{os.environ.get('TF_CONFIG')!r}"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    return _tpu_strategy(tpu, tpu_timeout)


def _tf_config_workers():
    try:
        config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON. Received: {os.environ['TF_CONFIG']!r}") from error
    return len(config.get("cluster", {}).get("worker", []))


def _tpu_strategy(tpu, timeout):
    """Connects to a TPU; an unreachable one raises instead of hanging.

    TensorFlow's connection call blocks (holding the interpreter lock) on an
    address that does not answer, so the TPU's gRPC address is first checked
    with a plain TCP connection that gives up after `timeout` seconds.
    """
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        master = resolver.master()
    except Exception as error:
        raise ValueError(
            f"Could not find a TPU ({type(error).__name__}: {error}). On a Cloud TPU VM pass "
            f"tpu='local'; elsewhere pass the TPU's name or grpc:// address. Received: tpu={tpu!r}"
        ) from None
    address = master[len("grpc://"):] if master.startswith("grpc://") else ""
    if address:
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=timeout).close()
        except (OSError, ValueError) as error:
            raise ValueError(
                f"Could not reach a TPU at {master} ({type(error).__name__}: {error}). On a Cloud TPU "
                f"VM pass tpu='local'; elsewhere pass the TPU's name or grpc:// address. "
                f"Received: tpu={tpu!r}"
            ) from None
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def per_replica_batch_size(global_batch_size, strategy):
    """The lanes each replica carries; the global batch must divide evenly."""
    from keras_brt.models.lanes import rows_per_replica

    return rows_per_replica(global_batch_size,
                            count=1 if strategy is None else strategy.num_replicas_in_sync)


def distribute_lanes(strategy, make_dataset, global_batch_size, vocabulary_size=None):
    """Per-replica lane datasets for `strategy` (each worker reads its own documents).

    Args:
        strategy: a `tf.distribute.Strategy`.
        make_dataset: `(per_replica_batch, input_context) -> tf.data.Dataset`, e.g.
            `lambda b, ctx: lane_dataset(source, tokenizer, b, T, repeat=True, input_context=ctx)`.
        global_batch_size: lanes over all replicas.
        vocabulary_size: the model's vocabulary. With it, every replica's batches are
            checked as `fit` checks an undistributed dataset: an id outside the vocabulary
            stops `fit` with a `ValueError` naming `token_ids` before any weight changes
            (`fit` cannot map a dataset that is already distributed). Without it, such an
            id makes the step's loss NaN, the step is not applied, and `fit` stops with a
            `FloatingPointError`.

    Returns:
        A distributed dataset for `fit`.
    """
    from keras_brt.models.input_checks import checked_inputs

    per_replica = per_replica_batch_size(global_batch_size, strategy)

    def replica_dataset(context):
        dataset = make_dataset(per_replica, context)
        return dataset if vocabulary_size is None else checked_inputs(dataset, vocabulary_size)

    return strategy.distribute_datasets_from_function(replica_dataset)


def free_ports(count):
    """`count` free TCP ports on 127.0.0.1."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def launch_local_workers(num_workers, command, env=None, timeout=None):
    """Runs `command` as `num_workers` MultiWorkerMirroredStrategy workers on this machine.

    Each process gets a `TF_CONFIG` naming all workers on 127.0.0.1 ports and its
    own index (worker 0 is the chief).

    Args:
        num_workers: number of worker processes.
        command: the argv list every worker runs.
        env: extra environment variables.
        timeout: seconds before the workers are killed.

    Returns:
        The list of `subprocess.CompletedProcess`-like results (returncode, stdout, stderr).
    """
    if num_workers < 1:
        raise ValueError(f"`num_workers` must be at least 1. Received: num_workers={num_workers}")
    workers = [f"127.0.0.1:{port}" for port in free_ports(num_workers)]
    processes = []
    for index in range(num_workers):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        process_env = dict(os.environ, **(env or {}), TF_CONFIG=json.dumps(config))
        processes.append(subprocess.Popen(command, env=process_env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return results


def main(argv=None):
    """`python -m keras_brt.distribute --workers N -- COMMAND...`: local multi-worker launch."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command every worker runs after --")
    results = launch_local_workers(args.workers, command)
    for index, result in enumerate(results):
        print(f"--- worker {index} (exit {result.returncode})\n{result.stdout}{result.stderr}")
    return max(result.returncode for result in results)

