"""Train the example model: a small CNN on the digits calibration split, exported to
ONNX (model.onnx) and torch.export (model.pt2). Both files are checked in, so the ONNX
path of edgekit needs no torch.

    python examples/digits/train.py      # needs the torch extra and scikit-learn
"""

from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "calibration" / "digits"


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build() -> nn.Module:
    """Factory for `edgekit quantize examples.digits.train:build` (untrained weights)."""
    return DigitsCNN().eval()


def example_inputs() -> tuple[torch.Tensor]:
    return (torch.zeros(2, 1, 8, 8),)


def train(epochs: int = 40) -> nn.Module:
    torch.manual_seed(0)
    data = np.load(DATA / "calib.npz")
    x, y = torch.from_numpy(data["input"]), torch.from_numpy(data["labels"])
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def main() -> None:
    model = train()
    ev = np.load(DATA / "eval.npz")
    with torch.no_grad():
        pred = model(torch.from_numpy(ev["input"])).argmax(1).numpy()
    print(f"eval accuracy: {(pred == ev['labels']).mean():.4f}")
    batch = torch.export.Dim("batch", min=1, max=4096)
    exported = torch.export.export(model, example_inputs(), dynamic_shapes={"x": {0: batch}})
    torch.export.save(exported, HERE / "model.pt2")
    torch.onnx.export(model, example_inputs(), HERE / "model.onnx", input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False, external_data=False)
    print(f"wrote {HERE / 'model.onnx'} and {HERE / 'model.pt2'}")


if __name__ == "__main__":
    main()
