"""`kcolor fit`: train the ECCV16 network from shards on one CPU, all local GPUs, or many machines.

    kcolor fit shards/ runs/w025 --width 0.25 --precision mixed_bfloat16 --epochs 20

One design serves every strategy: a custom loop with `strategy.run` and
`tf.nn.compute_average_loss`. (Keras 3 `model.fit` fails under
MultiWorkerMirroredStrategy, keras-team/keras#20585.) The optimizer is built inside
`strategy.scope()` before the step is traced.

RUN_DIR holds config.json (the resolved settings), ckpt/ (tf.train.Checkpoint of the
model, the optimizer and hence the step, which fixes the data position), logs/
(TensorBoard) and model.keras (the exported model, rewritten at each epoch end).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from kcolor import color, shards

CONFIG_NAME = "config.json"


@dataclasses.dataclass
class FitConfig:
    arch: str = "eccv16"  # eccv16 (the paper's network) | effnet_lite0 (ImageNet encoder + U-Net)
    width: float = 1.0  # channel multiplier; 1.0 = the paper (32M params), 0.25 for CPUs
    batch_size: int = 32  # global batch, split over all replicas
    epochs: int = 10
    lr: float = 3e-5  # Adam(W) as in the paper: lr 3e-5, betas 0.9/0.99, weight decay 1e-3
    lr_schedule: str = "constant"  # constant | cosine (to 0 at the last epoch's end)
    warmup_steps: int = 0  # linear ramp from 0 to lr over the first steps
    beta_1: float = 0.9
    beta_2: float = 0.99
    weight_decay: float = 1e-3
    rebalance: str = "zhang"  # zhang | neglog | none
    targets: str = "hard"  # hard: each cell's centre-pixel bin | soft: Zhang's soft encoding
    crop: int = 0  # random training crop side (multiple of 8); 0 = the shards' image size
    zoom: float = 1.0  # crops cut from squares of side crop/zoom..crop*zoom, resized to crop
    precision: str = "fp32"  # fp32 | mixed_bfloat16 | mixed_float16
    seed: int = 0
    checkpoint_every: int = 500  # steps; also at each epoch end
    keep_checkpoints: int = 3
    log_every: int = 20  # steps between TensorBoard train scalars
    val_images: int = 512  # val images per evaluation (0 = all)
    preview_images: int = 8  # val images in the TensorBoard grid
    max_steps: int = 0  # stop after this global step (0 = run all epochs)
    time_limit: float = 0.0  # minutes of training in this invocation (0 = none)

    # settings that fix the network's shape: a resumed run must keep them
    FROZEN = ("arch", "width", "rebalance", "targets", "crop", "seed")


PRECISIONS = ("fp32", "mixed_bfloat16", "mixed_float16")
LR_SCHEDULES = ("constant", "cosine")
TARGETS = ("hard", "soft")


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


class TrainingError(RuntimeError):
    """A training run stopped for a reason the user must act on."""


def resolve_config(run_dir: Path, config_file: Path | None, overrides: dict) -> FitConfig:
    """defaults < the run's saved config (resume) < config file < flags."""
    values = dataclasses.asdict(FitConfig())
    saved_path = run_dir / CONFIG_NAME
    saved = json.loads(saved_path.read_text()) if saved_path.is_file() else None
    if saved:
        values.update({k: v for k, v in saved.items() if k in values})
    if config_file is not None:
        values.update(_read_config_file(config_file, values))
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - {f.name for f in dataclasses.fields(FitConfig)}
    if unknown:
        raise ValueError(f"config: unknown settings {sorted(unknown)}")
    cfg = FitConfig(**values)
    if saved:
        for key in FitConfig.FROZEN:
            if key in saved and saved[key] != getattr(cfg, key):
                raise ValueError(
                    f"{saved_path}: this run was started with {key}={saved[key]!r}; "
                    f"cannot resume it with {key}={getattr(cfg, key)!r} (use a new RUN_DIR)"
                )
    _validate(cfg)
    return cfg


def _read_config_file(path: Path, known: dict) -> dict:
    if path.suffix == ".toml":
        import tomllib

        data = tomllib.loads(path.read_text())
    else:
        data = json.loads(path.read_text())
    bad = sorted(set(data) - set(known))
    if bad:
        raise ValueError(f"{path}: unknown settings {bad}; expected some of {sorted(known)}")
    return data


def _validate(cfg: FitConfig) -> None:
    from kcolor import model

    model.check_arch(cfg.arch)
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {cfg.precision!r}")
    if cfg.rebalance not in color.REBALANCE_MODES:
        raise ValueError(
            f"rebalance: expected one of {color.REBALANCE_MODES}, got {cfg.rebalance!r}"
        )
    if cfg.targets not in TARGETS:
        raise ValueError(f"targets: expected one of {TARGETS}, got {cfg.targets!r}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule: expected one of {LR_SCHEDULES}, got {cfg.lr_schedule!r}")
    if cfg.warmup_steps < 0:
        raise ValueError(f"warmup_steps: expected >= 0, got {cfg.warmup_steps}")
    if cfg.zoom < 1:
        raise ValueError(f"zoom: expected >= 1, got {cfg.zoom}")
    multiple = model.input_multiple(cfg.arch)
    if cfg.crop % multiple:
        raise ValueError(f"crop: expected a multiple of {multiple} for {cfg.arch}, got {cfg.crop}")
    if cfg.batch_size < 1 or cfg.width <= 0:
        raise ValueError("batch_size and width must be positive")


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


def fit(
    shard_dir: Path,
    run_dir: Path,
    cfg: FitConfig,
    strategy=None,
    init_model: Path | None = None,
    echo=print,
) -> Path:
    """Train (or resume) a run; returns the path of the exported model.keras."""
    import keras
    import tensorflow as tf

    from kcolor import dataset, loss, model, monitor

    run_dir = Path(run_dir)
    train_paths = shards.list_shards(shard_dir, "train")
    val_paths = shards.list_shards(shard_dir, "val")
    shards.check_compatible(train_paths + val_paths)
    meta = shards.read_meta(train_paths[0])
    table, size = meta["table"], int(meta["image_size"])
    stats = shards.load_stats(shard_dir)
    counts = np.asarray(stats["bin_counts"], np.int64)
    train_side = cfg.crop or size
    multiple = model.input_multiple(cfg.arch)
    if train_side > size or train_side % multiple:
        raise ValueError(
            f"crop: expected a multiple of {multiple} <= the shards' size {size}, got {cfg.crop}"
        )

    strategy = strategy or make_strategy()
    is_chief, worker_index = _worker_role(strategy)
    out_dir = run_dir if is_chief else run_dir / f".worker-{worker_index}"
    out_dir.mkdir(parents=True, exist_ok=True)
    saved_cfg = run_dir / CONFIG_NAME
    if saved_cfg.is_file():
        saved_table = json.loads(saved_cfg.read_text()).get("bin_table")
        if saved_table and saved_table != table.name:
            raise ValueError(
                f"{shard_dir}: bin table {table.name!r} does not match the run's "
                f"{saved_table!r} ({saved_cfg})"
            )
    if is_chief:
        record = dataclasses.asdict(cfg) | {"bin_table": table.name, "shards": str(shard_dir)}
        _atomic_write(saved_cfg, json.dumps(record, indent=2))

    keras.mixed_precision.set_global_policy("float32" if cfg.precision == "fp32" else cfg.precision)
    weights = color.rebalance_weights(counts, table, cfg.rebalance)
    prior = counts / counts.sum()
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise ValueError(f"batch_size {cfg.batch_size}: must divide by {replicas} replicas")
    echo(
        f"Creating model ({cfg.arch}, width {cfg.width:g}, {table.name}, {cfg.precision}, {replicas} replica(s))..."
    )
    with strategy.scope():
        # input_size = the shards' side even when training on crops: objects keep the
        # scale they were seen at, and colorize resizes photos to that side.
        net = model.build_model(
            table.name, cfg.width, size, cfg.rebalance, prior, arch=cfg.arch
        )
        if init_model is not None:
            init = model.load_model(init_model)
            model.check_bin_table(init, table, str(shard_dir))
            net.set_weights(init.get_weights())
        opt = keras.optimizers.AdamW(
            learning_rate=cfg.lr,
            beta_1=cfg.beta_1,
            beta_2=cfg.beta_2,
            weight_decay=cfg.weight_decay,
        )
        if cfg.precision == "mixed_float16":
            opt = keras.optimizers.LossScaleOptimizer(opt)
        opt.build(net.trainable_variables)
        hard_loss = loss.RebalancedCrossEntropy(weights, reduction=None)
        if cfg.targets == "soft":
            kernel = color.target_kernel(table)
            loss_fn = loss.SoftCrossEntropy(weights, kernel, reduction=None)
        else:
            loss_fn = hard_loss

    ckpt = tf.train.Checkpoint(model=net, optimizer=opt)
    manager = tf.train.CheckpointManager(
        ckpt, str(out_dir / "ckpt"), max_to_keep=cfg.keep_checkpoints
    )
    if manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        echo(f"Resumed from {manager.latest_checkpoint} (step {int(opt.iterations.numpy())})")

    pipelines = _input_pipelines(strategy)
    per_pipeline = cfg.batch_size // pipelines
    steps_per_epoch = (
        min(dataset.count_images(train_paths, p, pipelines) for p in range(pipelines))
        // per_pipeline
    )
    if steps_per_epoch == 0:
        raise ValueError(
            f"{shard_dir}: fewer train images per worker than the batch size {cfg.batch_size}"
        )
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)

    train_step = make_train_step(strategy, net, opt, loss_fn, cfg.batch_size)

    board = monitor.Board(out_dir / "logs", enabled=is_chief)
    # val loss is always the hard-target loss, so runs with either targets compare
    evaluate = monitor.Evaluator(net, hard_loss, table)
    val_batches = dataset.eval_dataset(val_paths, 32)
    if cfg.val_images:
        val_batches = val_batches.take(math.ceil(cfg.val_images / 32))
    preview = dataset.load_arrays(val_paths, cfg.preview_images)

    step = int(opt.iterations.numpy())
    last_saved = step
    started = time.monotonic()
    echo(
        f"Training {steps_per_epoch} steps/epoch x {cfg.epochs} epochs, batch {cfg.batch_size}, from step {step}"
    )
    while step < total_steps:
        epoch, skip = divmod(step, steps_per_epoch)

        def dataset_fn(ctx, epoch=epoch, skip=skip):
            return dataset.train_dataset(
                train_paths,
                ctx.get_per_replica_batch_size(cfg.batch_size),
                epoch=epoch,
                seed=cfg.seed,
                crop=train_side if train_side < size else 0,
                image_size=size,
                part=ctx.input_pipeline_id,
                parts=ctx.num_input_pipelines,
                skip_batches=skip * (replicas // ctx.num_input_pipelines),
                full_bins=cfg.targets == "soft",
                zoom=cfg.zoom,
            )

        dist = distribute(strategy, dataset_fn)
        bar = keras.utils.Progbar(
            steps_per_epoch, stateful_metrics=["loss", "img/s"], verbose=1 if is_chief else 0
        )
        bar.update(skip)
        tick, tick_step = time.monotonic(), step
        for batch in dist:
            # set before every step from the config, never taken from the checkpoint, so a
            # resumed run follows its configured rate (a plain variable: no retracing)
            lr = learning_rate(cfg, step, steps_per_epoch * cfg.epochs)
            opt.learning_rate = lr
            loss_value = float(train_step(batch))
            step += 1
            if not math.isfinite(loss_value):
                raise TrainingError(
                    f"loss is {loss_value} at step {step} (steps {last_saved + 1}-{step} since "
                    f"the last checkpoint); kept {manager.latest_checkpoint or 'no checkpoint'}. "
                    "Try a lower --lr or --precision fp32."
                )
            now = time.monotonic()
            ips = (step - tick_step) * cfg.batch_size / max(now - tick, 1e-9)
            bar.update(step - epoch * steps_per_epoch, [("loss", loss_value), ("img/s", ips)])
            if step % cfg.log_every == 0:
                board.scalars(
                    "train",
                    step,
                    {"loss": loss_value, "images_per_s": ips, "lr": lr},
                )
                tick, tick_step = now, step
            out_of_time = cfg.time_limit and (now - started) / 60 >= cfg.time_limit
            if step % cfg.checkpoint_every == 0 or out_of_time or step >= total_steps:
                manager.save(checkpoint_number=step)
                last_saved = step
            if out_of_time or step >= total_steps or step % steps_per_epoch == 0:
                break
        else:
            raise TrainingError(f"train data ran out before step {step + 1} (epoch {epoch})")
        if step % steps_per_epoch == 0 or step >= total_steps:
            if last_saved != step:
                manager.save(checkpoint_number=step)
                last_saved = step
            results = evaluate(val_batches)
            board.scalars("val", step, results)
            board.preview(step, monitor.preview_grid(net, preview, table))
            echo(
                f"epoch {epoch + 1}/{cfg.epochs} step {step}: "
                + ", ".join(f"val {k} {v:.4g}" for k, v in results.items())
            )
            model.export_model(net, out_dir / "model.keras")
        if cfg.time_limit and (time.monotonic() - started) / 60 >= cfg.time_limit:
            echo(f"Time limit of {cfg.time_limit:g} min reached at step {step}; rerun to resume.")
            break
    model.export_model(net, out_dir / "model.keras")
    board.close()
    echo(f"Model written to {out_dir / 'model.keras'}")
    return out_dir / "model.keras"


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


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
