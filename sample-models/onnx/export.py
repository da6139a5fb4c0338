"""Exports the ONNX test models and what onnxruntime says they answer.

    python sample-models/onnx/export.py     # in a virtualenv with the packages below

Writes, next to this file:
- digits-sklearn.onnx: a scikit-learn pipeline (StandardScaler + LogisticRegression) trained on
  the training rows of sample-models/data/digits.csv, exported with skl2onnx;
- digits-cnn.onnx: a small convolutional network built with onnx.helper: 4 fixed 3x3 filters
  (edges and a blob) -> ReLU -> 2x2 max-pool -> a dense layer trained by scikit-learn's
  LogisticRegression on those features -> softmax; inputs [N, 64] reshaped to [N, 1, 8, 8];
- scaler.onnx and zipmap.onnx: one ai.onnx.ml operator each (Scaler, ZipMap), what skl2onnx
  emits without div="div" and zipmap=False; the sandboxed runner lacks both, and the tests
  check that the load says which export option avoids them;
- expected.json: for every held-out row (i % 5 == 0), each model's probabilities and label as
  onnxruntime computes them, and scikit-learn's own predictions for the pipeline.

The sluice tests serve both files with the onnx-runner component and compare. Deterministic:
lbfgs on fixed data, no randomness. Packages: scikit-learn, skl2onnx, onnx, onnxruntime, numpy
(the versions used are recorded in expected.json).
"""

import json
import pathlib

import numpy as np
import onnx
import onnxruntime
import skl2onnx
import sklearn
from onnx import TensorProto, helper, numpy_helper
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = pathlib.Path(__file__).parent
DATA = HERE.parent / "data" / "digits.csv"

rows = np.loadtxt(DATA, delimiter=",", dtype=np.float32)
pixels, labels = rows[:, :64], rows[:, 64].astype(np.int64)
held_out = np.arange(len(rows)) % 5 == 0
x_train, y_train = pixels[~held_out], labels[~held_out]
x_test, y_test = pixels[held_out], labels[held_out]

# 1. scikit-learn pipeline -> skl2onnx.
pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
pipeline.fit(x_train, y_train)
sklearn_onnx = skl2onnx.convert_sklearn(
    pipeline,
    initial_types=[("pixels", FloatTensorType([None, 64]))],
    options={id(pipeline.steps[-1][1]): {"zipmap": False}, id(pipeline.steps[0][1]): {"div": "div"}},
    target_opset=17,
)
(HERE / "digits-sklearn.onnx").write_bytes(sklearn_onnx.SerializeToString())

# 2. A small CNN: fixed filters, a trained dense layer.
FILTERS = np.array(
    [
        [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],  # vertical edges
        [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],  # horizontal edges
        [[0, 1, 0], [1, -4, 1], [0, 1, 0]],  # a Laplacian (holes, corners)
        [[1, 1, 1], [1, 1, 1], [1, 1, 1]],  # a blob (ink)
    ],
    dtype=np.float32,
).reshape(4, 1, 3, 3) / 16.0


def cnn_features(x):
    """Conv (padding 1) -> ReLU -> 2x2 max-pool -> flatten, as the ONNX graph computes it."""
    images = np.pad(x.reshape(-1, 8, 8), ((0, 0), (1, 1), (1, 1)))
    conv = np.zeros((len(x), 4, 8, 8), dtype=np.float32)
    for f in range(4):
        for dy in range(3):
            for dx in range(3):
                conv[:, f] += FILTERS[f, 0, dy, dx] * images[:, dy:dy + 8, dx:dx + 8]
    relu = np.maximum(conv, 0)
    pooled = relu.reshape(len(x), 4, 4, 2, 4, 2).max(axis=(3, 5))
    return pooled.reshape(len(x), 64)


dense = LogisticRegression(max_iter=5000, C=10.0)
dense.fit(cnn_features(x_train), y_train)
weights = dense.coef_.T.astype(np.float32)  # [64, 10]
bias = dense.intercept_.astype(np.float32)
graph = helper.make_graph(
    [
        helper.make_node("Reshape", ["pixels", "image_shape"], ["image"]),
        helper.make_node("Conv", ["image", "filters"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("MaxPool", ["relu"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "weights", "bias"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0),
    ],
    "digits-cnn",
    [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 64])],
    [
        helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10]),
    ],
    [
        numpy_helper.from_array(np.array([-1, 1, 8, 8], dtype=np.int64), "image_shape"),
        numpy_helper.from_array(FILTERS, "filters"),
        numpy_helper.from_array(weights, "weights"),
        numpy_helper.from_array(bias, "bias"),
    ],
)
cnn = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
cnn.ir_version = 8
onnx.checker.check_model(cnn)
(HERE / "digits-cnn.onnx").write_bytes(cnn.SerializeToString())

# 3. The two ai.onnx.ml operators skl2onnx emits by default, one graph each.
ML = helper.make_operatorsetid("ai.onnx.ml", 1)
CORE = helper.make_operatorsetid("", 17)
scaler = helper.make_graph(
    [helper.make_node("Scaler", ["x"], ["y"], domain="ai.onnx.ml", offset=[0.5], scale=[2.0])],
    "scaler",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
)
onnx.save(helper.make_model(scaler, opset_imports=[CORE, ML]), HERE / "scaler.onnx")
probabilities_by_class = helper.make_sequence_type_proto(
    helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
)
zipmap = helper.make_graph(
    [helper.make_node("ZipMap", ["p"], ["z"], domain="ai.onnx.ml", classlabels_int64s=[0, 1])],
    "zipmap",
    [helper.make_tensor_value_info("p", TensorProto.FLOAT, [None, 2])],
    [helper.make_value_info("z", probabilities_by_class)],
)
onnx.save(helper.make_model(zipmap, opset_imports=[CORE, ML]), HERE / "zipmap.onnx")

# 3. What onnxruntime (and scikit-learn) answer on the held-out rows.
expected = {
    "versions": {
        "scikit-learn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    },
    "held_out_rows": int(held_out.sum()),
    "sklearn_labels": pipeline.predict(x_test).tolist(),
    "models": {},
}
for name in ["digits-sklearn", "digits-cnn"]:
    session = onnxruntime.InferenceSession(str(HERE / f"{name}.onnx"))
    label, probabilities = session.run(["label", "probabilities"], {"pixels": x_test})
    expected["models"][name] = {
        "accuracy": float((label == y_test).mean()),
        "labels": label.astype(int).tolist(),
        "probabilities": np.round(probabilities.astype(np.float64), 7).tolist(),
    }
    print(f"{name}: held-out accuracy {expected['models'][name]['accuracy']:.4f} (onnxruntime)")
(HERE / "expected.json").write_text(json.dumps(expected) + "\n")
