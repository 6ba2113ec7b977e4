"""`kcolor fit`: train a network from shards on one CPU, all local GPUs, or many machines.

    kcolor fit shards/ runs/a --arch effnet_lite0 --width 0.5 --epochs 4

One design serves every strategy: a custom loop with `strategy.run` and
`tf.nn.compute_average_loss` (Keras 3 `model.fit` fails under MultiWorkerMirroredStrategy,
keras-team/keras#20585); the optimizer is built inside `strategy.scope()`.
RUN_DIR holds config.json (the resolved settings), ckpt/ (model, optimizer, hence the step
and the data position), logs/ (TensorBoard) and model.keras (rewritten at each epoch end).
One fit at a time writes into it (kcolor.lock); kcolor.rundir clears what killed runs left
and turns a full disk or a bad run folder into one line (docs/reliability.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from kcolor import dataset, lock, rebalance, rundir, shards
from kcolor.config import CONFIG_NAME, FitConfig, load_settings, resolve_config  # noqa: F401 (the fit API)
from kcolor.rundir import TrainingError


def learning_rate(cfg: FitConfig, step: int, total_steps: int) -> float:
    """The learning rate of optimizer step `step` (0-based) of a run of `total_steps`.

    A pure function of the step, so a resumed run continues the schedule exactly.
    """
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        span = max(1, total_steps - cfg.warmup_steps)
        done = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * done))
    return cfg.lr


def make_strategy(cpu_replicas: int = 0):
    """MultiWorkerMirrored when TF_CONFIG names several workers, else Mirrored.

    `cpu_replicas` > 1 splits the CPU into that many logical devices (for testing
    multi-replica code without GPUs). Must be called before TensorFlow initializes.
    """
    import tensorflow as tf

    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    if len(cluster.get("worker", [])) + len(cluster.get("chief", [])) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas
        )
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cpu_replicas)])
    return tf.distribute.MirroredStrategy()


def _worker_role(strategy) -> tuple[bool, int]:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True, 0
    index = resolver.task_id or 0
    is_chief = resolver.task_type == "chief" or (
        resolver.task_type == "worker"
        and index == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )
    return is_chief, index


@dataclasses.dataclass
class _Data:
    """What the shards fix: their paths, bin table, image side and bin counts."""

    train: list[Path]
    val: list[Path]
    table: object  # color.BinTable
    size: int
    counts: np.ndarray

    @classmethod
    def open(cls, shard_dir: Path, cfg: FitConfig) -> _Data:
        from kcolor import model

        train_paths = shards.list_shards(shard_dir, "train")
        val_paths = shards.list_shards(shard_dir, "val")
        shards.check_compatible(train_paths + val_paths)
        for path in train_paths + val_paths:  # shapes, dtypes, counts: named before training
            shards.validate_shard(path)  # (bin values: as they are read, dataset._records)
        meta = shards.read_meta(train_paths[0])
        size = int(meta["image_size"])
        counts = np.asarray(shards.load_stats(shard_dir)["bin_counts"], np.int64)
        multiple = model.input_multiple(cfg.arch)
        if (cfg.crop or size) > size or (cfg.crop or size) % multiple:
            raise ValueError(
                f"crop: expected a multiple of {multiple} <= the shards' size {size}, got {cfg.crop}"
            )
        return cls(train_paths, val_paths, meta["table"], size, counts)


@dataclasses.dataclass
class _Run:
    """A run's model, optimizer, checkpoint and schedule (`_build`)."""

    cfg: FitConfig
    out_dir: Path
    is_chief: bool
    net: object
    opt: object
    train_step: object
    ckpt: object
    manager: object
    # the last step whose epoch-end work (validation, export) is done; in the checkpoint,
    # so a run killed between an epoch's checkpoint and its export finishes it on resume
    epoch_end_done: object
    steps_per_epoch: int
    total_steps: int

    @property
    def step(self) -> int:
        return int(self.opt.iterations.numpy())


def fit(
    shard_dir: Path,
    run_dir: Path,
    cfg: FitConfig,
    strategy=None,
    init_model: Path | None = None,
    echo=print,
) -> Path:
    """Train (or resume) a run; returns the path of the exported model.keras.

    Raises:
        lock.LockError: another fit is writing into RUN_DIR.
        ValueError: unusable shards, settings or run folder (one line naming it).
        TrainingError: the run had to stop (NaN loss, a full disk, a damaged shard);
            its last checkpoint is kept.
    """
    import tensorflow as tf

    run_dir = Path(run_dir)
    strategy = strategy or make_strategy()
    is_chief, worker_index = _worker_role(strategy)
    out_dir = run_dir if is_chief else run_dir / f".worker-{worker_index}"
    rundir.make_run_dir(out_dir)
    with lock.hold(out_dir, "kcolor fit", echo=echo):
        rundir.clear_stale_files(out_dir)
        rundir.check_resumable(run_dir, out_dir)
        data = _Data.open(shard_dir, cfg)
        run = _build(data, run_dir, out_dir, cfg, strategy, init_model, shard_dir, echo)
        try:
            return _train(run, data, strategy, echo)
        except tf.errors.InvalidArgumentError as e:
            bad = dataset.bad_data_message(e)
            if bad is None:
                raise
            raise TrainingError(
                f"{bad}; stopped at step {run.step}, kept {rundir.latest(run)}"
            ) from None


def _train(run: _Run, data: _Data, strategy, echo) -> Path:
    """Restore, finish an interrupted epoch end, then train to the end (or time limit)."""
    cfg = run.cfg
    validate = _Validation(run, data)
    rundir.restore(run, echo)
    if 0 < run.step and _at_epoch_end(run) and int(run.epoch_end_done.numpy()) < run.step:
        validate.epoch_end(echo)  # killed after the epoch's checkpoint, before its export
    started = time.monotonic()
    echo(
        f"Training {run.steps_per_epoch} steps/epoch x {cfg.epochs} epochs, "
        f"batch {cfg.batch_size}, from step {run.step}"
    )
    while run.step < run.total_steps:
        if cfg.time_limit and (time.monotonic() - started) / 60 >= cfg.time_limit:
            echo(
                f"Time limit of {cfg.time_limit:g} min reached at step {run.step}; rerun to resume."
            )
            break
        _train_epoch_part(run, data, strategy, validate.board, started)
        if _at_epoch_end(run):
            validate.epoch_end(echo)
    if int(run.epoch_end_done.numpy()) != run.step:  # stopped mid-epoch: export all the same
        rundir.export(run)
    validate.board.close()
    echo(f"Model written to {run.out_dir / 'model.keras'}")
    return run.out_dir / "model.keras"


def _at_epoch_end(run: _Run) -> bool:
    return run.step % run.steps_per_epoch == 0 or run.step >= run.total_steps


def _build(data, run_dir, out_dir, cfg, strategy, init_model, shard_dir, echo) -> _Run:
    """config.json, and the model, optimizer, loss and step."""
    import keras
    import tensorflow as tf

    from kcolor import loss, model

    is_chief = out_dir == run_dir
    saved = run_dir / CONFIG_NAME
    saved_table = load_settings(saved).get("bin_table") if saved.is_file() else None
    if saved_table and saved_table != data.table.name:
        raise ValueError(
            f"{shard_dir}: bin table {data.table.name!r} does not match the run's "
            f"{saved_table!r} ({saved})"
        )
    if is_chief:
        record = dataclasses.asdict(cfg) | {"bin_table": data.table.name, "shards": str(shard_dir)}
        rundir.write_config(run_dir / CONFIG_NAME, json.dumps(record, indent=2))
    precision = model.resolve_precision(cfg.precision, cfg.arch)
    keras.mixed_precision.set_global_policy(model.POLICIES[precision])
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise ValueError(f"batch_size {cfg.batch_size}: must divide by {replicas} replicas")
    echo(
        f"Creating model ({cfg.arch}, width {cfg.width:g}, {data.table.name}, {precision}, "
        f"{replicas} replica(s))..."
    )
    weights = rebalance.rebalance_weights(data.counts, data.table, cfg.rebalance)
    keras.utils.set_random_seed(cfg.seed)  # the weight initialization, not just the data
    with strategy.scope():
        # input_size = the shards' side even when training on crops: objects keep the
        # scale they were seen at, and colorize resizes photos to that side.
        prior = data.counts / data.counts.sum()
        net = model.build_model(
            data.table.name, cfg.width, data.size, cfg.rebalance, prior, arch=cfg.arch
        )
        if init_model is not None:
            _init_from(net, init_model, data.table, shard_dir)
        opt = optimizer(cfg, net)
        if precision == "fp16":
            opt = keras.optimizers.LossScaleOptimizer(opt)
        opt.build(net.trainable_variables)
        if cfg.targets == "soft":
            kernel = rebalance.target_kernel(data.table)
            loss_fn = loss.SoftCrossEntropy(weights, kernel, reduction=None)
        else:
            loss_fn = loss.RebalancedCrossEntropy(weights, reduction=None)
        epoch_end_done = tf.Variable(0, dtype=tf.int64, trainable=False)
    ckpt = tf.train.Checkpoint(model=net, optimizer=opt, epoch_end_done=epoch_end_done)
    manager = tf.train.CheckpointManager(ckpt, str(out_dir / "ckpt"), cfg.keep_checkpoints)
    pipelines = _input_pipelines(strategy)
    per_pipeline = cfg.batch_size // pipelines
    steps_per_epoch = (
        min(dataset.count_images(data.train, p, pipelines) for p in range(pipelines))
        // per_pipeline
    )
    if steps_per_epoch == 0:
        raise ValueError(
            f"{shard_dir}: fewer train images per worker than the batch size {cfg.batch_size}"
        )
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    step_fn = make_train_step(strategy, net, opt, loss_fn, cfg.batch_size)
    return _Run(
        cfg, out_dir, is_chief, net, opt, step_fn, ckpt, manager, epoch_end_done,
        steps_per_epoch, total_steps,
    )  # fmt: skip


def optimizer(cfg: FitConfig, net):
    """The AdamW of a run (not built). Under `--encoder-lr` below 1 the pretrained encoder's
    variables step at `cfg.encoder_lr` times the learning rate, their weight decay too; at 0
    its layers are frozen (`trainable = False`: Keras 3 then runs their batch norm as at
    inference, so its statistics stay too).

    The scaled optimizer is written here because Keras optimizers have no per-variable
    learning rate, and scaling the gradients instead would change nothing: Adam's steps
    do not depend on the gradient's scale.
    """
    import keras

    settings = dict(
        learning_rate=cfg.lr, beta_1=cfg.beta_1, beta_2=cfg.beta_2, weight_decay=cfg.weight_decay
    )
    slow_variables = []
    if cfg.encoder_lr != 1:
        from kcolor import encoder

        layers = encoder.pretrained_layers(net)
        for layer in layers:
            if cfg.encoder_lr == 0:
                layer.trainable = False
            slow_variables += layer.trainable_weights
    if not slow_variables:
        return keras.optimizers.AdamW(**settings)

    class ScaledAdamW(keras.optimizers.AdamW):
        def build(self, variables):
            super().build(variables)
            self._slow = {self._var_key(v) for v in slow_variables}

        def update_step(self, gradient, variable, learning_rate):
            if self._var_key(variable) in self._slow:
                learning_rate = keras.ops.cast(learning_rate, variable.dtype) * cfg.encoder_lr
                if self.weight_decay:  # decoupled, at the variable's own rate
                    self.assign_sub(variable, variable * self.weight_decay * learning_rate)
            super().update_step(gradient, variable, learning_rate)

    opt = ScaledAdamW(**settings)
    opt.exclude_from_weight_decay(var_list=slow_variables)  # decayed in update_step
    return opt


def _init_from(net, init_model: Path, table, shard_dir) -> None:
    """`--init`: start from another kcolor model's weights (same arch and width)."""
    from kcolor import model

    init = model.load_model(init_model)
    model.check_bin_table(init, table, str(shard_dir))
    mine, theirs = model.model_info(net), model.model_info(init)
    for key in ("arch", "width"):
        if mine.get(key, "eccv16") != theirs.get(key, "eccv16"):
            raise ValueError(
                f"{init_model}: its {key} is {theirs.get(key, 'eccv16')!r}, this run's is "
                f"{mine.get(key, 'eccv16')!r}; --init needs a model of the same {key}"
            )
    net.set_weights(init.get_weights())


class _Validation:
    """Epoch-end work: checkpoint, val figures, TensorBoard preview, model.keras export."""

    def __init__(self, run: _Run, data: _Data):
        from kcolor import loss, monitor

        self.run = run
        self.board = monitor.Board(run.out_dir / "logs", enabled=run.is_chief)
        # val loss is always the hard-target loss, so runs with either targets compare
        weights = rebalance.rebalance_weights(data.counts, data.table, run.cfg.rebalance)
        hard_loss = loss.RebalancedCrossEntropy(weights, reduction=None)
        self.evaluate = monitor.Evaluator(run.net, hard_loss, data.table)
        self.batches = dataset.eval_dataset(data.val, 32)
        if run.cfg.val_images:
            self.batches = self.batches.take(math.ceil(run.cfg.val_images / 32))
        self.preview = dataset.load_arrays(data.val, run.cfg.preview_images)
        self.table = data.table

    def epoch_end(self, echo) -> None:
        from kcolor import monitor

        run, step = self.run, self.run.step
        if rundir.latest_step(run) != step:
            rundir.save(run, step)
        results = self.evaluate(self.batches)
        self.board.scalars("val", step, results)
        self.board.preview(step, monitor.preview_grid(run.net, self.preview, self.table))
        epoch = math.ceil(step / run.steps_per_epoch)
        echo(
            f"epoch {epoch}/{run.cfg.epochs} step {step}: "
            + ", ".join(f"val {k} {v:.4g}" for k, v in results.items())
        )
        rundir.export(run)
        run.epoch_end_done.assign(step)
        rundir.save(run, step)  # now recording that this work is done


def _train_epoch_part(run: _Run, data: _Data, strategy, board, started: float) -> None:
    """Train from the current step to the end of its epoch (or the run, or the time limit),
    checkpointing every `checkpoint_every` steps and at the time limit."""
    import keras

    cfg, spe = run.cfg, run.steps_per_epoch
    epoch, skip = divmod(run.step, spe)
    end = min((epoch + 1) * spe, run.total_steps)
    replicas = strategy.num_replicas_in_sync

    def dataset_fn(ctx):
        return dataset.train_dataset(
            data.train,
            ctx.get_per_replica_batch_size(cfg.batch_size),
            epoch=epoch,
            seed=cfg.seed,
            crop=cfg.crop if 0 < cfg.crop < data.size else 0,
            image_size=data.size,
            part=ctx.input_pipeline_id,
            parts=ctx.num_input_pipelines,
            skip_batches=skip * (replicas // ctx.num_input_pipelines),
            full_bins=cfg.targets == "soft",
            zoom=cfg.zoom,
            degrade=cfg.degrade,
        )

    bar = keras.utils.Progbar(
        spe, stateful_metrics=["loss", "img/s"], verbose=1 if run.is_chief else 0
    )
    bar.update(skip)
    batches = iter(distribute(strategy, dataset_fn))
    try:
        _train_steps(run, batches, bar, board, started, epoch, end)
    except BaseException:
        if run.is_chief:
            print(flush=True)  # end the progress bar's line: the error gets a line of its own
        raise


def _train_steps(run: _Run, batches, bar, board, started: float, epoch: int, end: int) -> None:
    cfg, spe = run.cfg, run.steps_per_epoch
    tick, tick_step, last_saved = time.monotonic(), run.step, run.step
    step = run.step
    while step < end:
        batch = next(batches, None)
        if batch is None:
            raise TrainingError(f"train data ran out before step {step + 1} (epoch {epoch})")
        # set before every step from the config, never taken from the checkpoint, so a
        # resumed run follows its configured rate (a plain variable: no retracing)
        lr = learning_rate(cfg, step, spe * cfg.epochs)
        run.opt.learning_rate = lr
        loss_value = float(run.train_step(batch))
        step += 1
        if not math.isfinite(loss_value):
            raise TrainingError(
                f"loss is {loss_value} at step {step} (steps {last_saved + 1}-{step} since "
                f"the last checkpoint); kept {run.manager.latest_checkpoint or 'no checkpoint'}. "
                "Try a lower --lr or --precision fp32."
            )
        now = time.monotonic()
        ips = (step - tick_step) * cfg.batch_size / max(now - tick, 1e-9)
        bar.update(step - epoch * spe, [("loss", loss_value), ("img/s", ips)])
        if step % cfg.log_every == 0:
            board.scalars("train", step, {"loss": loss_value, "images_per_s": ips, "lr": lr})
            tick, tick_step = now, step
        out_of_time = cfg.time_limit and (now - started) / 60 >= cfg.time_limit
        if step % cfg.checkpoint_every == 0 or out_of_time:
            rundir.save(run, step)
            last_saved = step
        if out_of_time:
            return


def _input_pipelines(strategy) -> int:
    """Input pipelines of a run: one per worker process."""
    return max(1, getattr(strategy.extended, "_num_workers", 1))


def distribute(strategy, dataset_fn):
    """The batches for `make_train_step`: `dataset_fn(tf.distribute.InputContext)`, spread
    over the replicas.

    With one replica in one process the dataset is iterated as it is: `strategy.run`
    takes the batch as it comes, and there is nothing to spread. On a 2-core CPU (width
    0.25, 64 px crops, batch 32) `kcolor fit` trained at 26.8 images/s through a
    distributed iterator and at 39.5 without one. The cause is not pinned down: the
    same step timed alone (benchmarks/fit.py) runs at full speed either way.
    """
    import tensorflow as tf

    if strategy.num_replicas_in_sync == 1 and _input_pipelines(strategy) == 1:
        return dataset_fn(tf.distribute.InputContext())
    return strategy.distribute_datasets_from_function(dataset_fn)


def make_train_step(strategy, net, opt, loss_fn, global_batch: int):
    """The distributed step: (L, bins) per replica -> the global batch's mean loss.

    Each replica's loss is `compute_average_loss` over the *global* batch, and the
    optimizer all-reduces (sums) the gradients, so N replicas step exactly like one
    device given the same global batch.
    """
    import tensorflow as tf

    @tf.function(autograph=False)  # plain TF ops: no source to convert at trace time
    def train_step(batch):
        def step_fn(L, bins):
            with tf.GradientTape() as tape:
                logits = net(L, training=True)
                per_image = loss_fn(bins, logits)
                batch_loss = tf.nn.compute_average_loss(per_image, global_batch_size=global_batch)
                scaled = opt.scale_loss(batch_loss)
            grads = tape.gradient(scaled, net.trainable_variables)
            opt.apply_gradients(zip(grads, net.trainable_variables, strict=True))
            return batch_loss

        per_rep = strategy.run(step_fn, args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_rep, axis=None)

    return train_step
