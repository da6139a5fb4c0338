"""Trains the digits scikit-learn model that MLServer serves, and writes its model settings.

    python benches/compare/mlserver/train.py MODEL_DIR [--max-batch-size N] [--max-batch-time S]

MODEL_DIR (a scratch folder, not in the repo) gets `model.joblib` (only when missing, or with
--retrain) and `model-settings.json` (always rewritten, so a caller can switch MLServer's
adaptive batching on and off without retraining: --max-batch-size 0 means off).

The model is the one `sample-models/onnx/export.py` exports to ONNX: StandardScaler +
LogisticRegression(max_iter=5000), lbfgs, fit on float32 rows of sample-models/data/digits.csv
with the repo's split (row i is held out when i % 5 == 0). Deterministic. Its held-out labels
equal `sklearn_labels` in sample-models/onnx/expected.json (checked below when the versions
match). Served input: `pixels`, FP32 [N, 64]; outputs `predict` (INT64 [N, 1]: MLServer's NumpyCodec adds the trailing 1) and, on request,
`predict_proba` (FP32 [N, 10]: the model is fit on float32).
"""

import argparse
import json
import pathlib

import joblib
import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

REPO = pathlib.Path(__file__).resolve().parents[3]
DATA = REPO / "sample-models" / "data" / "digits.csv"
EXPECTED = REPO / "sample-models" / "onnx" / "expected.json"
MODEL_NAME = "digits-sklearn"


def load_split():
    rows = np.loadtxt(DATA, delimiter=",", dtype=np.float32)
    pixels, labels = rows[:, :64], rows[:, 64].astype(np.int64)
    held_out = np.arange(len(rows)) % 5 == 0
    return pixels[~held_out], labels[~held_out], pixels[held_out], labels[held_out]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir", type=pathlib.Path)
    parser.add_argument("--max-batch-size", type=int, default=0)
    parser.add_argument("--max-batch-time", type=float, default=0.0)
    parser.add_argument("--retrain", action="store_true")
    args = parser.parse_args()
    args.model_dir.mkdir(parents=True, exist_ok=True)
    model_path = args.model_dir / "model.joblib"

    if args.retrain or not model_path.exists():
        x_train, y_train, x_test, y_test = load_split()
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        model.fit(x_train, y_train)
        predicted = model.predict(x_test)
        accuracy = float((predicted == y_test).mean())
        print(f"{MODEL_NAME}: held-out accuracy {accuracy:.4f} "
              f"({int((predicted == y_test).sum())} of {len(y_test)} rows)")
        expected = json.loads(EXPECTED.read_text())
        if expected["versions"]["scikit-learn"] == sklearn.__version__:
            same = predicted.tolist() == expected["sklearn_labels"]
            print(f"{MODEL_NAME}: labels {'match' if same else 'DIFFER FROM'} expected.json")
        tmp = model_path.with_suffix(".tmp")
        joblib.dump(model, tmp)
        tmp.replace(model_path)

    settings = {
        "name": MODEL_NAME,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "platform": "sklearn",
        "versions": [f"sklearn/{sklearn.__version__}"],
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [
            {"name": "predict", "datatype": "INT64", "shape": [-1, 1]},
            {"name": "predict_proba", "datatype": "FP32", "shape": [-1, 10]},
        ],
        "max_batch_size": args.max_batch_size,
        "max_batch_time": args.max_batch_time,
        "parameters": {"uri": "./model.joblib", "version": "v1"},
    }
    (args.model_dir / "model-settings.json").write_text(json.dumps(settings, indent=2) + "\n")


if __name__ == "__main__":
    main()
