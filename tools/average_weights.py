"""Average the weights of several models of one training run (late epochs' snapshots).

    python tools/average_weights.py OUT.keras run-epoch6.keras run-epoch7.keras run/model.keras

Averaging the weights of snapshots taken along the end of one run (Izmailov et al. 2018,
"Averaging weights leads to wider optima and better generalization") gives a network that
is often a little better than any one of them at no cost when it runs. The snapshots must
share arch, width, bin table and input size (it says which differs otherwise). Batch
norm's moving statistics are averaged like the weights, not measured again on training
data as Izmailov et al. do: snapshots this close agree well enough (check by scoring).
OUT keeps the first model's settings (prior, decoding defaults): choose its decoding
again (tools/sweep_decoding.py, then `kcolor decoding`). Which snapshots to average is
decided on held-out photos, as any other model choice.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from kcolor import model

MUST_MATCH = ("arch", "width", "bin_table", "input_size")


def average(paths: list[Path]) -> model.keras.Model:
    nets = [model.load_model(p) for p in paths]
    first = model.model_info(nets[0])
    for path, net in zip(paths[1:], nets[1:], strict=True):
        info = model.model_info(net)
        for key in MUST_MATCH:
            if info.get(key) != first.get(key):
                raise SystemExit(
                    f"{path}: {key} {info.get(key)!r}, but {paths[0]} has {first.get(key)!r}"
                )
    weights = [net.get_weights() for net in nets]
    nets[0].set_weights(
        [np.mean(arrays, axis=0).astype(arrays[0].dtype) for arrays in zip(*weights, strict=True)]
    )
    return nets[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("models", type=Path, nargs="+")
    args = parser.parse_args()
    if len(args.models) < 2:
        parser.error("give two or more models to average")
    model.export_model(average(args.models), args.out)
    print(f"{args.out}: the mean of {len(args.models)} models' weights")


if __name__ == "__main__":
    main()
