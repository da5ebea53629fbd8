"""tf.distribute for prunecli: which strategy (--strategy), a copy of the model whose variables the
strategy mirrors for fine-tuning, and reductions across replicas.

Only the train steps run replicated. `replicated` swaps in a copy of the model built inside
`strategy.scope()` for the length of fine-tuning and copies its weights back afterwards. Masks,
optimizer slots and shadow weights made while the copy is in use are made inside the scope too: every
replica holds its own. Whatever else runs during fine-tuning (a gradual schedule's re-scoring and
re-masking, the evaluation when the final sparsity is reached) runs under `loaded_model`, on the
loaded model on one device, as in the rest of the run: Keras's evaluate fails on a model built under
MultiWorkerMirroredStrategy, and scoring code need not know about distributed variables.

A replica computes its loss on its share of each global batch. Keras's optimizer all-reduces the
gradients with a SUM, so each replica's loss is weighted by its share of the global batch
(`global_share`): the summed gradient is then the gradient of the mean loss over the global batch,
the same as on one device.

MultiWorkerMirroredStrategy configures collective ops, which TensorFlow allows only before it has
run anything: `get_strategy` must be called before the model is loaded, and it caches the strategy,
so later calls (from fine-tuning) get the same object.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

from prunecli import interrupts
from prunecli.config import STRATEGIES, read_tf_config
from prunecli.errors import ConfigError, first_line
from prunecli.structure import keras_graph

_created: dict = {}
_loaded: dict[int, tuple] = {}  # id(session) -> (loaded model, its targets) while `replicated` holds a copy


def get_strategy(name: str = "default", worker_wait_s: int = 600, progress=None):
    """The tf.distribute strategy for `name`, created once per process. `worker_wait_s`
    (--worker-wait): how long a multi-worker task waits for the others to start; `progress` says so."""
    if name not in _created:
        import tensorflow as tf

        if name not in STRATEGIES:
            raise ConfigError(f"unknown strategy {name!r}; choose from: {', '.join(STRATEGIES)}")
        if name == "default":
            _created[name] = tf.distribute.get_strategy()
        elif name == "mirrored":
            _created[name] = _mirrored(tf)
        elif name == "multiworker":
            _created[name] = _multiworker(tf, worker_wait_s, progress)
        else:
            _created[name] = _tpu(tf)
    return _created[name]


def _mirrored(tf):
    """All GPUs; without GPUs, every logical CPU device (one replica on an ordinary machine)."""
    if tf.config.list_logical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])


def _multiworker(tf, wait_s: int, progress):
    """MultiWorkerMirroredStrategy, with the wait for the other tasks bounded by `wait_s` and
    interruptible where it can be (see _wait_for_leader)."""
    spec = read_tf_config()
    _wait_for_leader(spec, wait_s, progress)
    _bound_the_wait_for_peers(spec, wait_s)
    try:
        with interrupts.handlers_kept():  # TensorFlow blocks here until every task has registered
            return tf.distribute.MultiWorkerMirroredStrategy()
    except tf.errors.DeadlineExceededError as exc:
        raise ConfigError(
            f"--strategy multiworker: not every task of TF_CONFIG's cluster started within {wait_s} s "
            f"(--worker-wait): {first_line(exc)}"
        ) from exc
    except RuntimeError as exc:
        if "startup" in str(exc):
            raise ConfigError(
                "--strategy multiworker must be set up before TensorFlow runs anything; "
                "call prunecli.training.distribute.get_strategy('multiworker') before loading the model"
            ) from exc
        raise
    except ValueError as exc:  # a TF_CONFIG whose cluster or task TensorFlow cannot use
        raise ConfigError(f"--strategy multiworker: {first_line(exc)}") from exc


def _leader(cluster: dict) -> tuple[str, str]:
    """The task that runs TensorFlow's coordination service: the chief, else worker 0 (as the strategy
    chooses it), as (job, "host:port")."""
    job = "chief" if "chief" in cluster else "worker"
    return job, cluster[job][0]


def _wait_for_leader(spec: dict, wait_s: int, progress) -> None:
    """A task other than the leader waits here, in Python, until the leader's server accepts connections.

    TensorFlow's own wait is native code that holds the interpreter: Ctrl-C and SIGTERM are not handled
    until it returns (a worker whose chief never started ran 46 minutes under `timeout 60`). Waiting
    for the leader's port first keeps that wait interruptible (exit 130) and bounded (--worker-wait);
    once the leader is up, registering with it takes moments. The leader itself waits for the others
    inside TensorFlow, bounded by the same deadline (_bound_the_wait_for_peers)."""
    import socket
    import time

    job, address = _leader(spec["cluster"])
    if spec["task"]["type"] == job and spec["task"]["index"] == 0:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f'TF_CONFIG address {address!r} of "{job}" 0 is not "host:port"')
    if progress is not None:
        progress(f'waiting up to {wait_s} s for the cluster\'s leader ("{job}" 0 at {address}) to start')
    deadline = time.monotonic() + wait_s
    while True:
        interrupts.checkpoint()
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise ConfigError(
                f'--strategy multiworker: the cluster\'s leader ("{job}" 0 at {address}) did not start within '
                f"{wait_s} s (--worker-wait)"
            )
        time.sleep(0.5)


def _bound_the_wait_for_peers(spec: dict, wait_s: int) -> None:
    """Configure TensorFlow's coordination service as MultiWorkerMirroredStrategy would (the chief, or
    worker 0, leads; chief and worker tasks are coordinated), with a registration deadline: TensorFlow's
    own default waits an hour for a task that never starts. The strategy keeps a service configured
    before it."""
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    cluster = spec["cluster"]
    leader, _address = _leader(cluster)
    jobs = [
        coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(cluster[job]))
        for job in ("chief", "worker")
        if job in cluster
    ]
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=f"/job:{leader}/replica:0/task:0",
        coordinated_jobs=jobs,
        cluster_register_timeout_in_ms=wait_s * 1000,
    )


def _tpu(tf):
    """TPUStrategy on the TPU that TPUClusterResolver finds (TPU_NAME, or the local TPU VM)."""
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    except Exception as exc:  # ValueError (no TPU name), NotFoundError (no TPU devices), connection errors
        raise ConfigError(f"--strategy tpu: no TPU available here ({first_line(exc)})") from exc


def is_default(strategy) -> bool:
    """True for TensorFlow's no-op default strategy (TF has no public test for it; its class is private)."""
    return type(strategy).__name__ == "_DefaultDistributionStrategy"


def describe(strategy) -> dict:
    """What the report says about the strategy: its class, replicas and, across workers, this worker's role."""
    info = {"strategy": type(strategy).__name__, "replicas": int(strategy.num_replicas_in_sync)}
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is not None and getattr(resolver, "task_type", None):
        info.update(task_type=resolver.task_type, task_id=int(resolver.task_id), chief=is_chief(strategy))
    return info


def is_chief(strategy=None) -> bool:
    """Whether this process writes the outputs (model, report, exports): always, except for the
    non-chief tasks of a multi-worker cluster.

    The chief is the task of type "chief", or worker 0 when the cluster names no chief (Keras's and
    TensorFlow's convention). With a strategy, its cluster resolver says which task this is; without
    one, the MultiWorkerMirroredStrategy this process created (if any), else nothing: a process that
    runs no multi-worker strategy writes its outputs whatever TF_CONFIG says.
    """
    if strategy is None:
        strategy = _created.get("multiworker")
        if strategy is None:
            return True
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if not task_type:
        return True
    return task_type == "chief" or (
        task_type == "worker" and int(resolver.task_id) == 0 and "chief" not in resolver.cluster_spec().as_dict()
    )


def non_chief_note(strategy=None) -> str:
    """The one line a non-chief worker prints instead of writing (it exits 0: its work was the all-reduce)."""
    strategy = strategy if strategy is not None else _created.get("multiworker")
    resolver = getattr(strategy, "cluster_resolver", None)
    task = f"{getattr(resolver, 'task_type', 'worker')} {getattr(resolver, 'task_id', '?')}"
    return f"{task} is not the chief: the chief writes the model, the report and the exports"


# ---------------------------------------------------------------- the replicated model


@contextlib.contextmanager
def replicated(session, strategy):
    """For the block, `session.model` and `session.targets` are a copy built in `strategy.scope()`.

    The copy's weights are copied back into the loaded model when the block ends (also on errors,
    so the session never keeps a model with distributed variables). The default strategy changes
    nothing.
    """
    if is_default(strategy):
        yield strategy
        return
    import keras

    original, original_targets = session.model, session.targets
    with strategy.scope(), keras_graph.copying_in_memory():
        copy = keras.models.clone_model(original)
        keras_graph.copy_weights(original, copy)
    session.model, session.targets = copy, _targets_in(copy, original, original_targets)
    _loaded[id(session)] = (original, original_targets)
    try:
        yield strategy
    finally:
        del _loaded[id(session)]
        original.set_weights(copy.get_weights())
        session.model, session.targets = original, original_targets


@contextlib.contextmanager
def loaded_model(session):
    """Inside `replicated`: for the block, the session holds the loaded model again, carrying the
    copy's current weights, and the copy takes the block's changes (new masks) when it ends.
    Outside `replicated` (the default strategy) it does nothing."""
    if id(session) not in _loaded:
        yield
        return
    original, original_targets = _loaded[id(session)]
    copy, copy_targets = session.model, session.targets
    original.set_weights(copy.get_weights())
    session.model, session.targets = original, original_targets
    try:
        yield
    finally:
        copy.set_weights(original.get_weights())
        session.model, session.targets = copy, copy_targets


def _targets_in(copy, original, targets) -> list:
    """The same targets, pointing at the copy's layers and variables (matched by position)."""
    from prunecli.structure.keras_graph import all_layers

    weight_at = {id(v): i for i, v in enumerate(original.weights)}
    layer_at = {id(layer): i for i, layer in enumerate(all_layers(original))}
    copy_weights, copy_layers = list(copy.weights), all_layers(copy)
    return [
        replace(
            t,
            variable=copy_weights[weight_at[id(t.variable)]],
            layer=copy_layers[layer_at[id(t.layer)]] if t.layer is not None else None,
        )
        for t in targets
    ]


def distribute_batches(strategy, dataset):
    """The dataset split across replicas (each global batch into per-replica shares); as is by default.

    Workers shard by element (AutoShardPolicy.DATA): in-memory datasets have no files to shard.
    """
    if is_default(strategy):
        return dataset
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


def global_share(local_count):
    """Inside a replica: local_count / (sum of local_count over all replicas). 1.0 on one device.

    Multiply a replica's mean loss by this, and the SUM of the replicas' gradients is the gradient of
    the mean loss over the whole global batch, even when the last batch splits unevenly.
    """
    import tensorflow as tf

    local = tf.cast(local_count, tf.float32)
    total = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, local)
    return local / tf.maximum(total, 1.0)


def global_mean_part(losses, local_count):
    """Inside a replica: its part of the global batch's mean loss, sum(its losses) / global count.

    Summed over the replicas (and so are its gradients) this is the mean loss of the whole global
    batch; on one device it is the batch mean. A replica that got no examples of a short last batch
    contributes 0 (a mean of its empty share would be NaN). `losses` may be per example, or already
    a mean (a scalar), which stands for local_count equal losses.
    """
    import tensorflow as tf

    local = tf.cast(local_count, tf.float32)
    losses = tf.cast(losses, tf.float32)
    loss_sum = tf.reduce_sum(losses) if losses.shape.rank else losses * local
    total = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, local)
    return loss_sum / tf.maximum(total, 1.0)


def reduce_sum(strategy, per_replica):
    """Sum a (nest of) per-replica values over all replicas, in cross-replica context."""
    import tensorflow as tf

    return tf.nest.map_structure(lambda v: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None), per_replica)


# ---------------------------------------------------------------- data-driven scoring


def summed_step(strategy, batch_fn, then=None):
    """A compiled step over one global batch: batch_fn(x, y) on each replica's share, the nest of
    per-replica sums summed over all replicas (and workers), then `then` applied to that sum.

    batch_fn returns sums over the examples it gets (sum of |activation|, counts, ...), or, for a
    statistic not linear in the examples such as |gradient of the batch's mean loss|, the replica's
    linear part (its gradient of loss_sum / global count, see `global_share`); `then` (abs) maps the
    all-replica sum, so the result equals the single-device statistic of the global batch."""
    import tensorflow as tf

    @tf.function
    def step(x, y):
        batch = reduce_sum(strategy, strategy.run(batch_fn, args=(x, y)))
        return batch if then is None else then(batch)

    return step
