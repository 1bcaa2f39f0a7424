"""Make calibration/digits/{calib,eval}.npz from scikit-learn's bundled digits data set.

Two disjoint, stratified splits of the 1,797 8x8 images (pixel values 0..16 scaled to
0..1, shape N x 1 x 8 x 8, float32), keyed by the example model's input name `input`,
with integer `labels`. Written uncompressed so that edgekit memory-maps them.

    python calibration/make_digits.py
"""

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

OUT = Path(__file__).resolve().parent / "digits"


def main() -> None:
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_cal, x_eval, y_cal, y_eval = train_test_split(x, y, test_size=0.4, random_state=0, stratify=y)
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez(OUT / "calib.npz", input=x_cal, labels=y_cal)
    np.savez(OUT / "eval.npz", input=x_eval, labels=y_eval)
    print(f"calib: {len(y_cal)} samples, eval: {len(y_eval)} samples -> {OUT}")


if __name__ == "__main__":
    main()
