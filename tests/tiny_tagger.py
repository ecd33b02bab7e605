"""A tiny WD14-v3-style tagger built with the `onnx` package: the real interface (`model.onnx` with an NHWC float32
input whose name and size are the model's own, `selected_tags.csv` with ratings, general and character rows), and
outputs computable by hand.

The model averages each input channel over the image, m = (m0, m1, m2) in the order the tagger is fed (BGR), then
gives sigmoid(m · W + b) per tag:
- `blue_background`: (m0 - m2) / 25 - 2, `red_background`: (m2 - m0) / 25 - 2 (blue is channel 0 only in BGR);
- `white_background`: (m0 + m1 + m2) / 30 - 18 (on when the mean is above 180: only on a 0..255 scale);
- constants: general `p70` 0.7, `^_^` 0.6, `half` 0.5, `p40` 0.4; characters `hatsune_miku` 0.9,
  `kagamine_rin` 0.8; ratings general 0.2, sensitive 0.7, questionable 0.1, explicit 0.05.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

SIZE = 8
INPUT_NAME = "input_1:0"  # as in the SmilingWolf exports; the tagger reads it from the model


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# (name, category, weights on (m0, m1, m2), bias)
TAGS = [
    ("general", 9, (0, 0, 0), logit(0.2)),
    ("sensitive", 9, (0, 0, 0), logit(0.7)),
    ("questionable", 9, (0, 0, 0), logit(0.1)),
    ("explicit", 9, (0, 0, 0), logit(0.05)),
    ("blue_background", 0, (1 / 25, 0, -1 / 25), -2.0),
    ("red_background", 0, (-1 / 25, 0, 1 / 25), -2.0),
    ("white_background", 0, (1 / 30, 1 / 30, 1 / 30), -18.0),
    ("p70", 0, (0, 0, 0), logit(0.7)),
    ("^_^", 0, (0, 0, 0), logit(0.6)),
    ("half", 0, (0, 0, 0), 0.0),
    ("p40", 0, (0, 0, 0), logit(0.4)),
    ("hatsune_miku", 4, (0, 0, 0), logit(0.9)),
    ("kagamine_rin", 4, (0, 0, 0), logit(0.8)),
]


def expected_scores(bgr_means) -> dict[str, float]:
    """The model's output for channel means given in the order it is fed, computed by hand."""
    m = np.asarray(bgr_means, dtype=np.float64)
    return {name: 1 / (1 + math.exp(-(float(np.dot(w, m)) + b))) for name, _, w, b in TAGS}


def build_tiny_tagger(folder: Path, size: int = SIZE, batch: int | str = "N") -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    weights = np.array([w for _, _, w, _ in TAGS], dtype=np.float32).T  # (3, K)
    bias = np.array([b for _, _, _, b in TAGS], dtype=np.float32)
    nodes = [
        helper.make_node("ReduceMean", [INPUT_NAME], ["means"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["means", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_tagger",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [batch, size, size, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, [batch, len(TAGS)])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    with open(folder / "selected_tags.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["tag_id", "name", "category", "count"])
        for i, (name, category, _, _) in enumerate(TAGS):
            writer.writerow([1000 + i, name, category, 100 - i])
    return folder
