"""digits-logreg written in Python: the same trained parameters as the Rust model
(sample-models/digits-logreg/params.slpm), served as a WebAssembly component built with
componentize-py against sluice's WIT world. CPython runs inside the sandbox; the matrix product,
bias add and softmax run on the host through the `compute` import, so each prediction costs a
handful of host calls rather than 640 multiplications in the interpreter.

Build with sample-models/python-logreg/build.sh; serve the result like any component:
    sluice load python_logreg.wasm --config sample-models/digits-logreg/params.slpm
"""

import struct

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import compute
from wit_world.imports.types import (
    Dtype,
    ModelError_Internal,
    ModelError_InvalidInput,
    ModelInfo,
    Tensor,
    TensorSpec,
)

FEATURES, CLASSES = 64, 10

# componentize-py makes a new `Predictor` for each call into the component, so state that
# lives from `init` to `predict` is module-level: the host-side weights, uploaded once.
STATE = {}


def read_params(config: bytes) -> dict:
    """The SLPM format of guest-sdk/src/params.rs: magic, count, then per tensor its name,
    rank, dimensions and little-endian f32 values. Returns name -> (shape, raw bytes)."""
    if config[:4] != b"SLPM":
        raise Err(ModelError_Internal("the config is not an SLPM parameter file"))
    offset = 4
    (count,) = struct.unpack_from("<I", config, offset)
    offset += 4
    params = {}
    for _ in range(count):
        (name_len,) = struct.unpack_from("<I", config, offset)
        offset += 4
        name = config[offset:offset + name_len].decode()
        offset += name_len
        (rank,) = struct.unpack_from("<I", config, offset)
        offset += 4
        shape = list(struct.unpack_from(f"<{rank}I", config, offset))
        offset += 4 * rank
        size = 4
        for dim in shape:
            size *= dim
        params[name] = (shape, config[offset:offset + size])
        offset += size
    return params


class Predictor(exports.Predictor):
    def init(self, config: bytes) -> None:
        params = read_params(config)
        try:
            weights_shape, weights = params["weights"]
            bias_shape, bias = params["bias"]
        except KeyError as missing:
            raise Err(ModelError_Internal(f"the parameters lack {missing}"))
        if weights_shape != [FEATURES, CLASSES] or bias_shape != [CLASSES]:
            raise Err(ModelError_Internal(f"unexpected shapes {weights_shape}, {bias_shape}"))
        STATE["weights"] = compute.DeviceTensor.upload(weights_shape, weights)
        STATE["bias"] = compute.DeviceTensor.upload(bias_shape, bias)

    def info(self) -> ModelInfo:
        return ModelInfo(
            name="python-logreg",
            version="1",
            inputs=[TensorSpec("pixels", Dtype.FP32, [-1, FEATURES])],
            outputs=[
                TensorSpec("probabilities", Dtype.FP32, [-1, CLASSES]),
                TensorSpec("label", Dtype.INT64, [-1]),
            ],
            max_batch=256,
        )

    def predict(self, inputs: list) -> list:
        pixels = next((t for t in inputs if t.name == "pixels"), None)
        if pixels is None:
            raise Err(ModelError_InvalidInput("no `pixels` input"))
        rows = pixels.shape[0]
        # The input's raw bytes go to the host as they came: no per-element conversion. Each
        # host tensor is released as soon as it is used (`with`), not when Python collects it.
        with compute.DeviceTensor.upload(pixels.shape, pixels.data) as x:
            with compute.matmul(x, STATE["weights"]) as product:
                with compute.add(product, STATE["bias"]) as scores:
                    with compute.softmax(scores) as softmax:
                        probabilities = softmax.read()
        values = struct.unpack(f"<{rows * CLASSES}f", probabilities)
        labels = [
            max(range(CLASSES), key=lambda c: values[r * CLASSES + c]) for r in range(rows)
        ]
        return [
            Tensor("probabilities", Dtype.FP32, [rows, CLASSES], probabilities),
            Tensor("label", Dtype.INT64, [rows], struct.pack(f"<{rows}q", *labels)),
        ]
