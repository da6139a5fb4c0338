"""Trains a model with scikit-learn and exports it to ONNX for sluice: a StandardScaler and a
LogisticRegression on scikit-learn's own 8x8 digits (bundled with it, nothing downloaded).
Replace the training with yours; keep the export options and the check at the end.

    python3 -m venv .venv && .venv/bin/pip install -r requirements.txt
    .venv/bin/python export.py                  # writes NAME.onnx
    sluice load --onnx NAME.onnx                # served as "NAME"

The check is the test: the exported graph, run by onnx's reference evaluator, must give
scikit-learn's own label for every held-out row, or nothing is written.
"""

from pathlib import Path

import numpy as np
import skl2onnx
from onnx.reference import ReferenceEvaluator
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

OUT = Path(__file__).resolve().parent / "NAME.onnx"

digits = load_digits()
pixels, labels = digits.data.astype(np.float32), digits.target
held_out = np.arange(len(pixels)) % 5 == 0
scaler, classifier = StandardScaler(), LogisticRegression(max_iter=5000)
pipeline = make_pipeline(scaler, classifier)
pipeline.fit(pixels[~held_out], labels[~held_out])

graph = skl2onnx.convert_sklearn(
    pipeline,
    # The input's name is the one requests use; None: any number of rows (the batch
    # dimension sluice requires first).
    initial_types=[("pixels", FloatTensorType([None, 64]))],
    options={
        # Required, not cosmetic: without zipmap=False the probabilities are a ZipMap (a list
        # of dictionaries), which the sandboxed runner cannot run (`Unimplemented(ZipMap)`)
        # and which is no tensor; without div="div" the scaler is the ai.onnx.ml Scaler op
        # (`Unimplemented(Scaler)` in the sandbox). The native runner takes either.
        id(classifier): {"zipmap": False},
        id(scaler): {"div": "div"},
    },
    target_opset=17,
)

onnx_labels, _ = ReferenceEvaluator(graph).run(None, {"pixels": pixels[held_out]})
expected = pipeline.predict(pixels[held_out])
wrong = int((onnx_labels != expected).sum())
if wrong:
    raise SystemExit(f"the exported graph disagrees with scikit-learn on {wrong} rows")
OUT.write_bytes(graph.SerializeToString())
accuracy = float((expected == labels[held_out]).mean())
print(f"wrote {OUT.name}: held-out accuracy {accuracy:.2%}, the graph agrees on all {len(expected)} rows")
