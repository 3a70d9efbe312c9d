"""Prepare the handwritten digits data set for the example learners.

Usage: /usr/bin/python3 examples/prepare_digits.py DEST_DIR

Loads scikit-learn's 8x8 digits (the data ships inside the package, so no
network is needed), shuffles them with a fixed seed, splits them 80/20 and
writes two files:

    DEST_DIR/train.npz   x: float32 (n, 8, 8) in 0..1, y: int64 labels
    DEST_DIR/test.npz    the same for the held-out fifth

The output depends only on the seed, so running it again rewrites the same
arrays.
"""

import argparse
import os
import sys

import numpy as np
from sklearn.datasets import load_digits

SEED = 1234
TEST_FRACTION = 0.2


def load():
    """Return all digits as (x, y): x float32 (n, 8, 8) in 0..1, y int64."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    return x, y


def split(x, y, seed=SEED, test_fraction=TEST_FRACTION):
    """Shuffle with a fixed seed and cut into (train, test) pairs."""
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    test_idx, train_idx = order[:n_test], order[n_test:]
    return (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])


def write(path, x, y):
    """Write one split atomically, so a reader never sees half a file."""
    tmp = path + ".tmp.npz"
    np.savez(tmp, x=x, y=y)
    os.replace(tmp, path)
    print(f"wrote {path}: x {x.dtype} {x.shape}, y {y.dtype} {y.shape}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest_dir", help="directory to write train.npz and test.npz into")
    args = parser.parse_args(argv)

    os.makedirs(args.dest_dir, exist_ok=True)
    x, y = load()
    (x_train, y_train), (x_test, y_test) = split(x, y)
    write(os.path.join(args.dest_dir, "train.npz"), x_train, y_train)
    write(os.path.join(args.dest_dir, "test.npz"), x_test, y_test)
    return 0


if __name__ == "__main__":
    sys.exit(main())
