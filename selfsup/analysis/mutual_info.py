"""Mutual information of a representation by binning.

The estimate of Shwartz-Ziv & Tishby ("Opening the black box of deep neural
networks via information", 2017), as used by the original DisCo BI analysis:
normalise each representation vector (softmax by default), cut the value
range into equal-width bins, and treat each row of bin indices as one
discrete symbol T. With empirical frequencies over the N samples:

    H(T)     = -sum_t p(t) log2 p(t)
    H(T|Y)   = sum_y p(y) H(T | Y=y)
    I(X;T)   = H(T)            (T is a deterministic function of the input X,
                                and every sample is taken as a distinct input)
    I(T;Y)   = H(T) - H(T|Y)

All values are in bits. I(X;T) <= log2 N and I(T;Y) <= H(Y).
"""

from __future__ import annotations

import numpy as np

from selfsup.core.errors import UserError

NORMALISATIONS = ("softmax", "l2", "none")
RANGES = ("data", "unit")


def softmax(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """Numerically stable softmax along `axis` (float32: ample for binning,
    and many times faster than float64 on wide representations)."""
    x = np.asarray(x, dtype=np.float32)
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def normalise(t: np.ndarray, how: str = "softmax") -> np.ndarray:
    """Row-wise normalisation applied before binning: 'softmax', 'l2' or 'none'."""
    t = np.asarray(t, dtype=np.float32)
    if how == "softmax":
        return softmax(t, axis=1)
    if how == "l2":
        norm = np.linalg.norm(t, axis=1, keepdims=True)
        return t / np.maximum(norm, 1e-12)
    if how == "none":
        return t
    raise UserError(f"normalisation {how!r} unknown; expected one of {', '.join(NORMALISATIONS)}")


def bin_edges(values: np.ndarray, n_bins: int, value_range: str = "data") -> np.ndarray:
    """Equal-width edges, n_bins + 1 of them, shared by all dimensions.

    value_range='data' spans the observed min..max of `values`;
    'unit' spans [0, 1] (natural for softmax outputs, but wide softmax
    vectors then fall almost entirely into the first bin).
    """
    if n_bins < 1:
        raise UserError(f"number of bins must be >= 1, got {n_bins}")
    if value_range == "unit":
        low, high = 0.0, 1.0
    elif value_range == "data":
        low, high = float(np.min(values)), float(np.max(values))
    else:
        raise UserError(f"bin range {value_range!r} unknown; expected one of {', '.join(RANGES)}")
    if high <= low:  # constant input: one bin holds everything
        high = low + 1.0
    return np.linspace(low, high, n_bins + 1)


def discretise(t: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index (0 .. len(edges) - 2) of every value for equal-width `edges`
    (from bin_edges); a value on an inner edge goes to the upper bin, values
    outside the edges to the first or last bin."""
    n_bins = len(edges) - 1
    low, high = float(edges[0]), float(edges[-1])
    idx = np.floor((np.asarray(t, dtype=np.float32) - np.float32(low)) / np.float32(high - low) * np.float32(n_bins))
    return np.clip(idx, 0, n_bins - 1).astype(np.int64)


def symbols(codes: np.ndarray) -> np.ndarray:
    """One integer id per row of a 2-D array of bin indices (equal rows, equal ids)."""
    codes = np.asarray(codes)
    if codes.ndim == 1:
        codes = codes[:, None]
    # each row as one opaque byte string: np.unique on those is much faster
    # than np.unique(axis=0), which sorts column by column
    fits_byte = codes.size == 0 or (codes.min() >= 0 and codes.max() < 256)
    small = codes.astype(np.uint8 if fits_byte else np.int64)
    small = np.ascontiguousarray(small)
    rows = small.view(np.dtype((np.void, small.dtype.itemsize * small.shape[1]))).reshape(-1)
    _, ids = np.unique(rows, return_inverse=True)
    return ids.reshape(-1)


def entropy(ids: np.ndarray) -> float:
    """Entropy in bits of the empirical distribution of integer ids."""
    ids = np.asarray(ids).reshape(-1)
    if ids.size == 0:
        return 0.0
    _, counts = np.unique(ids, return_counts=True)
    p = counts / counts.sum()
    return float(max(0.0, -(p * np.log2(p)).sum()))


def conditional_entropy(ids: np.ndarray, given: np.ndarray) -> float:
    """H(ids | given) in bits: sum over values g of p(g) H(ids | given=g)."""
    ids = np.asarray(ids).reshape(-1)
    given = np.asarray(given).reshape(-1)
    total = 0.0
    for g in np.unique(given):
        mask = given == g
        total += mask.mean() * entropy(ids[mask])
    return float(total)


def check_lengths(t: np.ndarray, y: np.ndarray, what: str = "representation") -> None:
    """Raise UserError unless t has one row per label."""
    if len(t) != len(y):
        raise UserError(f"{what} has {len(t)} rows but labels have {len(y)}; they must match")
    if len(t) == 0:
        raise UserError(f"{what} is empty")


def check_finite(t: np.ndarray, what: str = "representation") -> None:
    """Raise UserError when t holds NaN or infinite values (a diverged model)."""
    bad = int(np.size(t) - np.count_nonzero(np.isfinite(t)))
    if bad:
        raise UserError(f"{what} holds {bad} NaN or infinite values (did the training diverge?)")


def mi_by_binning(
    t: np.ndarray, y: np.ndarray, n_bins: int = 30, norm: str = "softmax", value_range: str = "data"
) -> dict[str, float]:
    """Binning estimate of I(X;T) and I(T;Y) of representation `t` (N x D)
    with labels `y` (N). Returns a dict with I_XT, I_TY, H_T, H_Y (bits),
    n_distinct (number of distinct binned rows) and n (samples)."""
    t = np.asarray(t)
    y = np.asarray(y).reshape(-1)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise UserError(f"representation must be 2-D (samples x features), got shape {t.shape}")
    check_lengths(t, y)
    check_finite(t)
    z = normalise(t, norm)
    codes = discretise(z, bin_edges(z, n_bins, value_range))
    ids = symbols(codes)
    h_t = entropy(ids)
    h_t_given_y = conditional_entropy(ids, y)
    return {
        "I_XT": h_t,
        "I_TY": max(0.0, h_t - h_t_given_y),
        "H_T": h_t,
        "H_Y": entropy(y),
        "n_distinct": int(ids.max()) + 1,
        "n": int(len(y)),
    }
