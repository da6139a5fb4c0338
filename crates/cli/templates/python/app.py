"""A sluice model written in Python, built into a WebAssembly component by componentize-py
(`sluice build`) against sluice's WIT world, which `sluice new` wrote into wit/. The logic is
in model.py; this file declares the model's inputs and outputs and turns errors into
sluice's: `ModelError_InvalidInput` is the client's mistake (INVALID_ARGUMENT),
`ModelError_Internal` the model's own (INTERNAL)."""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.types import (
    Dtype,
    ModelError_Internal,
    ModelError_InvalidInput,
    ModelInfo,
    Tensor,
    TensorSpec,
)

import model

# componentize-py makes a new `Predictor` for each call into the component, so state that
# lives from `init` to `predict` is module-level.
STATE = {}


class Predictor(exports.Predictor):
    def init(self, config: bytes) -> None:
        try:
            STATE["a"], STATE["b"] = model.parse_config(config)
        except ValueError as e:
            raise Err(ModelError_Internal(str(e)))

    def info(self) -> ModelInfo:
        return ModelInfo(
            name="NAME",
            version="1",
            # The first dimension is the batch: -1, any number of rows.
            inputs=[TensorSpec("x", Dtype.FP32, [-1, 3])],
            outputs=[TensorSpec("y", Dtype.FP32, [-1, 3])],
            max_batch=128,
        )

    def predict(self, inputs: list) -> list:
        x = next((t for t in inputs if t.name == "x"), None)
        if x is None:
            raise Err(ModelError_InvalidInput("no `x` input"))
        y = model.affine(STATE["a"], STATE["b"], x.data)
        return [Tensor("y", Dtype.FP32, x.shape, y)]
