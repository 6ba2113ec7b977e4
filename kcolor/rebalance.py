"""Class rebalancing and decoding: from bin frequencies to loss weights, and from a
predicted bin distribution to ab (Zhang, Isola & Efros 2016, Sec. 2.2-2.3).

    >>> from kcolor import color, rebalance
    >>> table = color.get_bin_table("zhang313")
    >>> w = rebalance.rebalance_weights(counts, table, "zhang")     # (Q,) loss weights
    >>> ab = rebalance.decode_ab(logits, table.centres)             # annealed mean, T 0.38

The constants (sigma, lambda, T) are color.py's, with their sources.
"""

from __future__ import annotations

import numpy as np

from kcolor import color

# --- class rebalancing ------------------------------------------------------

REBALANCE_MODES = ("zhang", "neglog", "none")


def rebalance_weights(
    counts: np.ndarray,
    table: color.BinTable,
    mode: str = "zhang",
    sigma: float = color.REBALANCE_SIGMA,
    lam: float = color.REBALANCE_LAMBDA,
) -> np.ndarray:
    """Per-bin class-rebalancing weights from bin frequencies.

    Args:
        counts: (Q,) pixel counts per bin (int64), over the train split.
        table: the bin table the counts refer to.
        mode: 'zhang': prior smoothed with a Gaussian of `sigma` in ab, mixed with the
            uniform distribution (weight `lam`), inverted, normalized so that the
            expected weight under the (unsmoothed) prior is 1 (Zhang et al. eq. 4).
            'neglog': -log p per bin; a bin never seen gets the weight of the rarest
            bin that was seen (it is at least that rare, and an infinite weight would
            blow up the loss on the first such pixel).
            'none': all ones.
    Returns:
        (Q,) float32 weights.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.shape != (table.size,):
        raise ValueError(
            f"bin counts: expected shape ({table.size},) for {table.name}, got {counts.shape}"
        )
    if mode == "none":
        return np.ones(table.size, np.float32)
    total = counts.sum()
    if total <= 0:
        raise ValueError("bin counts: all zero; cannot derive rebalancing weights")
    p = counts / total
    if mode == "zhang":
        smoothed = smoothed_prior(p, table, sigma)
        w = 1.0 / ((1.0 - lam) * smoothed + lam / table.size)
        w /= (p * w).sum()
        return w.astype(np.float32)
    if mode == "neglog":
        seen = p > 0
        w = np.empty(table.size)
        w[seen] = -np.log(p[seen])
        w[~seen] = w[seen].max()
        return w.astype(np.float32)
    raise ValueError(f"rebalance: expected one of {REBALANCE_MODES}, got {mode!r}")


def smoothed_prior(prior: np.ndarray, table: color.BinTable, sigma: float = color.REBALANCE_SIGMA):
    """The prior p~ of Zhang et al. eq. 4: bin frequencies smoothed with a Gaussian in ab.

    Args:
        prior: (Q,) bin frequencies or counts (any non-negative scale).
        sigma: the Gaussian's standard deviation in ab units.
    Returns:
        (Q,) float64, summing to 1. Bins far from every seen color may be 0 (underflow).
    """
    smoothed = _ab_gaussian(table, sigma) @ np.asarray(prior, np.float64)
    return smoothed / smoothed.sum()


def target_kernel(table: color.BinTable, sigma: float = color.REBALANCE_SIGMA) -> np.ndarray:
    """Row i: the soft target of a pixel whose true bin is i (Zhang et al. Sec. 2.1).

    A Gaussian of `sigma` ab units around bin i's centre over all bin centres, each row
    normalized to sum to 1. Zhang spreads each pixel over its 5 nearest bins; with
    sigma 5 on a grid of 10 the weight beyond the nearest 8 is below 0.1%, so the full
    Gaussian is the same target without a neighbour search.

    Returns:
        (Q, Q) float32, rows summing to 1.
    """
    if sigma <= 0:
        raise ValueError(f"sigma: expected > 0, got {sigma}")
    kernel = _ab_gaussian(table, sigma)
    return (kernel / kernel.sum(1, keepdims=True)).astype(np.float32)


def _ab_gaussian(table: color.BinTable, sigma: float) -> np.ndarray:
    """(Q, Q) float64 exp(-d^2 / 2 sigma^2), d the ab distance between bin centres."""
    d2 = ((table.centres[:, None, :] - table.centres[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2.0 * sigma**2))


# --- decoding ---------------------------------------------------------------

DECODE_METHODS = ("annealed", "argmax")


def check_rebalance_strength(strength: float) -> float:
    """`strength` as a float when it is in [0, color.MAX_REBALANCE_STRENGTH]; else ValueError."""
    if not 0.0 <= strength <= color.MAX_REBALANCE_STRENGTH:
        raise ValueError(
            f"rebalance strength: expected a value in [0, {color.MAX_REBALANCE_STRENGTH:g}], "
            f"got {strength}"
        )
    return float(strength)


def rebalance_logits(logits, trained_weights, decode_weights, strength: float):
    """Re-weight a predicted bin distribution to a chosen class-rebalancing strength.

    A network trained with per-bin loss weights w_t learns q(bin | L) proportional to
    w_t[bin] p(bin | L), p the plain posterior. The result is proportional to
    p(bin | L) w_d[bin] ** strength: 0 gives the plain posterior (the most accurate
    colors, but dull, since desaturated colors dominate photos), 1 the distribution a
    network trained with w_d predicts (Zhang's rebalancing: vivid, but wrong more often
    where the network is unsure), values between trade the two. This is post-hoc logit
    adjustment (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021).

    Args:
        logits: (..., Q) float logits (tf.Tensor or numpy).
        trained_weights: (Q,) positive weights of the network's training loss (all ones
            for a network trained without rebalancing).
        decode_weights: (Q,) positive rebalancing weights to apply (Zhang's).
        strength: in [0, color.MAX_REBALANCE_STRENGTH].
    Returns:
        (..., Q) float32 numpy logits.
    """
    shift = np.float32(check_rebalance_strength(strength)) * np.log(
        np.asarray(decode_weights, np.float32)
    ) - np.log(np.asarray(trained_weights, np.float32))
    return np.asarray(logits, np.float32) + shift


def decode_ab(
    logits, centres: np.ndarray, method: str = "annealed", temperature: float = color.ANNEALED_T
):
    """Distribution over bins -> ab.

    Args:
        logits: (..., Q) unnormalized log-probabilities (tf.Tensor or numpy).
        centres: (Q, 2) bin centres.
        method: 'annealed' (softmax(logits / T), then the mean of the centres; T=1 is the
            plain mean, T->0 approaches the mode) or 'argmax' (centre of the top bin).
    Returns:
        (..., 2) float32 tf.Tensor, a and b.
    """
    import tensorflow as tf

    logits = tf.cast(tf.convert_to_tensor(logits), tf.float32)
    centres = tf.constant(np.asarray(centres, np.float32))
    if method == "argmax":
        return tf.gather(centres, tf.argmax(logits, axis=-1))
    if method == "annealed":
        if temperature <= 0:
            raise ValueError(f"temperature: expected > 0, got {temperature}")
        probs = tf.nn.softmax(logits / temperature, axis=-1)
        return tf.tensordot(probs, centres, axes=1)
    raise ValueError(f"decode: expected one of {DECODE_METHODS}, got {method!r}")
