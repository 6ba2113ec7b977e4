"""The settings of `kcolor fit`, as data: one dataclass holds each setting's default,
help and choices; the CLI's options and `kcolor fit --help` are generated from it.

    >>> from kcolor import config
    >>> cfg = config.resolve_config(Path("runs/a"), None, {"epochs": 20})

Precedence: defaults < the run's saved config.json (resume) < a config file < flags.
Importing this module stays light (no TensorFlow), so `kcolor --help` is quick.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from kcolor.rebalance import REBALANCE_MODES

CONFIG_NAME = "config.json"
ARCHS = ("eccv16", "effnet_lite0")
# what input sides must divide by: eccv16 has three stride-2 stages, EfficientNet five
ARCH_STRIDES = {"eccv16": 8, "effnet_lite0": 32}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# `kcolor export`: file formats, and what the exported model outputs
EXPORT_FORMATS = ("savedmodel", "tflite", "onnx")
EXPORT_OUTPUTS = ("ab", "bins")
MAX_UPLOAD_MB = 25  # kcolor serve: default limit of one upload, in MB (10**6 bytes)
# earlier names of the precisions, still read from old run configs and flags
PRECISION_ALIASES = {"mixed_bfloat16": "bf16", "mixed_float16": "fp16"}
LR_SCHEDULES = ("constant", "cosine")
TARGETS = ("hard", "soft")


def _setting(default, help: str, choices: tuple | None = None):
    """A FitConfig field: its default, and the help and choices that `kcolor fit --help`
    shows (the CLI's options are generated from these fields)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclasses.dataclass
class FitConfig:
    """The settings of a `kcolor fit` run: defaults < config file < flags."""

    arch: str = _setting(
        "eccv16",
        "eccv16: the paper's network; effnet_lite0: an ImageNet-pretrained EfficientNet-Lite0 "
        "encoder with a U-Net decoder.",
        ARCHS,
    )
    width: float = _setting(
        1.0, "Channel multiplier (eccv16: 1.0 = the paper, 32M params; 0.25 suits a CPU)."
    )
    batch_size: int = _setting(32, "Global batch size, split over all replicas.")
    epochs: int = _setting(10, "Epochs to train in all (a resumed run continues to this).")
    # Adam(W) as in the paper: lr 3e-5, betas 0.9/0.99, weight decay 1e-3
    lr: float = _setting(3e-5, "AdamW learning rate.")
    lr_schedule: str = _setting(
        "constant", "cosine: decay to 0 at the end of the last epoch.", LR_SCHEDULES
    )
    warmup_steps: int = _setting(0, "Steps of linear ramp up to --lr.")
    beta_1: float = _setting(0.9, "AdamW beta 1.")
    beta_2: float = _setting(0.99, "AdamW beta 2.")
    weight_decay: float = _setting(1e-3, "AdamW weight decay.")
    encoder_lr: float = _setting(
        1.0,
        "effnet_lite0: the pretrained encoder's learning rate as a fraction of --lr; 0 = "
        "frozen (its weights and batch-norm statistics stay as they start).",
    )
    rebalance: str = _setting("zhang", "Class rebalancing of the loss.", REBALANCE_MODES)
    targets: str = _setting(
        "hard",
        "hard: the bin of each output cell's centre pixel; soft: Zhang's soft encoding of "
        "all the cell's pixels (Gaussian, sigma 5).",
        TARGETS,
    )
    crop: int = _setting(
        0, "Random training crop side (a multiple of the arch's stride); 0 = full shard images."
    )
    zoom: float = _setting(
        1.0,
        "Scale augmentation: crops are cut from squares of side crop/Z..crop*Z and resized "
        "to --crop; 1 = none.",
    )
    degrade: float = _setting(
        0.0,
        "Share of training images whose lightness is degraded as an old print's (faded, "
        "blurred, grainy, JPEG-compressed, each by a random amount); 0 = none.",
    )
    precision: str = _setting(
        "auto",
        "Arithmetic: auto = bf16 where it trains faster (a GPU, or a CPU with bfloat16 "
        "instructions for eccv16), else fp32. Weights are stored in fp32 either way.",
        PRECISIONS,
    )
    seed: int = _setting(0, "Data order and augmentation seed.")
    checkpoint_every: int = _setting(500, "Steps between checkpoints (also at each epoch end).")
    keep_checkpoints: int = _setting(3, "Checkpoints kept.")
    log_every: int = _setting(20, "Steps between TensorBoard train scalars.")
    val_images: int = _setting(512, "Val images per evaluation, 0 = all.")
    preview_images: int = _setting(8, "Val images in the TensorBoard preview grid.")
    max_steps: int = _setting(0, "Stop at this global step; 0 = run all epochs.")
    time_limit: float = _setting(
        0.0, "Minutes to train in this invocation (rerun to resume); 0 = none."
    )

    # settings a resumed run must keep: they fix the network's shape, the data order or
    # the variables the optimizer holds
    FROZEN = ("arch", "width", "rebalance", "targets", "crop", "seed", "encoder_lr")


def resolve_config(run_dir: Path, config_file: Path | None, overrides: dict) -> FitConfig:
    """defaults < the run's saved config (resume) < config file < flags."""
    values = dataclasses.asdict(FitConfig())
    saved_path = run_dir / CONFIG_NAME
    saved = load_settings(saved_path) if saved_path.is_file() else None
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


def load_settings(path: Path) -> dict:
    """A settings file (TOML for .toml, else JSON) as a dict; a broken one raises a
    one-line ValueError naming the file."""
    kind = "TOML" if path.suffix == ".toml" else "JSON"
    try:
        if kind == "TOML":
            import tomllib

            data = tomllib.loads(path.read_text())
        else:
            data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, TOMLDecodeError
        raise ValueError(f"{path}: not valid {kind}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a table of settings, got a {type(data).__name__}")
    return data


def _read_config_file(path: Path, known: dict) -> dict:
    data = load_settings(path)
    bad = sorted(set(data) - set(known))
    if bad:
        raise ValueError(f"{path}: unknown settings {bad}; expected some of {sorted(known)}")
    return data


def _validate(cfg: FitConfig) -> None:
    cfg.precision = PRECISION_ALIASES.get(cfg.precision, cfg.precision)
    for field in dataclasses.fields(cfg):
        choices, value = field.metadata["choices"], getattr(cfg, field.name)
        if choices and value not in choices:
            raise ValueError(f"{field.name}: expected one of {choices}, got {value!r}")
    if cfg.warmup_steps < 0:
        raise ValueError(f"warmup_steps: expected >= 0, got {cfg.warmup_steps}")
    if cfg.encoder_lr < 0:
        raise ValueError(f"encoder_lr: expected >= 0, got {cfg.encoder_lr}")
    if cfg.encoder_lr != 1 and cfg.arch != "effnet_lite0":
        raise ValueError(
            f"encoder_lr: {cfg.arch} has no pretrained encoder; only effnet_lite0 does"
        )
    if cfg.zoom < 1:
        raise ValueError(f"zoom: expected >= 1, got {cfg.zoom}")
    if not 0 <= cfg.degrade <= 1:
        raise ValueError(f"degrade: expected 0..1, got {cfg.degrade}")
    multiple = ARCH_STRIDES.get(cfg.arch, 1)
    if cfg.crop % multiple:
        raise ValueError(f"crop: expected a multiple of {multiple} for {cfg.arch}, got {cfg.crop}")
    if cfg.batch_size < 1 or cfg.width <= 0:
        raise ValueError("batch_size and width must be positive")
