#!/usr/bin/env python3
"""Write model-packed.onnx: the same weights as model.onnx in a graph that
skips the padding.

    python models/pack.py models/model.onnx models/model-packed.onnx

(run by models/fetch.py in a venv of pinned packages, models/requirements-pack.txt;
the output's sha256 is checked against models/manifest.json.)

Why: model.onnx (all-MiniLM-L6-v2, a PyTorch export) takes a padded
[batch, sequence] batch, so every dense layer also runs on the padding rows,
and its attention is a dozen small nodes that ONNX Runtime's transformer
optimiser does not fuse. The graph written here:

  * takes the batch's tokens packed end to end (`input_ids`, `position_ids`,
    one entry per real token) and runs the embeddings, every projection after
    attention, the feed-forward layers and the layer norms on those rows only;
  * lays the tokens out padded ([batch, sequence], through `unpad_index`,
    where padding points at a zero row) only for attention itself, which is
    ONNX Runtime's fused `Attention` operator with the texts' `lengths` as its
    mask, and packs them again after it (`pack_index`);
  * adds each projection's bias in its `Gemm`, uses ONNX Runtime's fused
    `BiasGelu` (bias and the exact erf GELU), and the plain Add and
    `LayerNormalization` for the residuals (see `Graph.layer_norm` for why
    not `SkipLayerNormalization`);
  * returns `token_states`, [tokens, 384], the last layer's state of each real
    token, which Cordon mean-pools per text.

The weights are copied as model.onnx stores them (int8 with a float scale per
output column, dequantised by a Cast and a Mul that ONNX Runtime folds at load);
query, key and value are concatenated into one projection. Nothing is
retrained or requantised, so the vectors are the same up to float rounding.
The output is byte-for-byte reproducible with the pinned packages.
"""

import sys

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as H
from onnx import numpy_helper as nh

HIDDEN = 384
HEADS = 12
LAYERS = 6
EPSILON = 1e-12
PREFIX = "inner."


class Source:
    """The exported graph's weights, found by the biases that follow them."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.init = {i.name: nh.to_array(i) for i in g.initializer}
        self.nodes = list(g.node)
        self.producer = {o: n for n in g.node for o in n.output}
        # A weight is stored as `<w>_q` (int8), Cast to float, then Mul by
        # `<w>_scale`; map the Mul's output back to the pair.
        self.quantised = {}
        for n in g.node:
            if n.op_type == "Mul" and n.input[0] in self.producer:
                cast = self.producer[n.input[0]]
                if cast.op_type == "Cast" and cast.input[0] in self.init and n.input[1] in self.init:
                    self.quantised[n.output[0]] = (self.init[cast.input[0]], self.init[n.input[1]])

    def weight(self, name: str):
        return self.quantised[name]

    def dense(self, bias: str):
        """(int8 weight, scale, bias) of the MatMul whose output `bias` is added to."""
        add = next(n for n in self.nodes if n.op_type == "Add" and n.input[1] == bias)
        matmul = self.producer[add.input[0]]
        assert matmul.op_type == "MatMul", f"{bias} does not follow a MatMul"
        q, scale = self.weight(matmul.input[1])
        return q, scale, self.init[bias]

    def tensor(self, name: str):
        return self.init[name]


class Graph:
    """Nodes and initialisers of the graph being written."""

    def __init__(self):
        self.nodes, self.inits = [], []

    def const(self, name: str, array) -> str:
        self.inits.append(nh.from_array(np.ascontiguousarray(array), name))
        return name

    def quantised(self, name: str, q, scale) -> str:
        """A weight stored int8 and dequantised in the graph, as the source does."""
        self.const(f"{name}_q", q)
        self.const(f"{name}_scale", scale)
        self.node("Cast", [f"{name}_q"], [f"{name}_f"], to=TensorProto.FLOAT)
        self.node("Mul", [f"{name}_f", f"{name}_scale"], [name])
        return name

    def node(self, op: str, inputs, outputs, ms: bool = False, **attrs):
        domain = "com.microsoft" if ms else ""
        self.nodes.append(H.make_node(op, inputs, outputs, name=outputs[0], domain=domain, **attrs))

    def layer_norm(self, x: str, gamma: str, beta: str, out: str):
        # The plain operator, not ONNX Runtime's SkipLayerNormalization: on
        # this class of machine (x86-64, AVX2) its CPU kernel took 840 us
        # where an Add and this took 155-212 us, for [350, 384].
        self.node("LayerNormalization", [x, gamma, beta], [out], axis=-1, epsilon=EPSILON)


def build(src: Source) -> onnx.ModelProto:
    g = Graph()
    g.const("rows", np.array([-1, HIDDEN], np.int64))
    g.const("zero_row", np.zeros((1, HIDDEN), np.float32))

    # Embeddings on the packed tokens, [tokens, 384]. Every text is one
    # segment (token type 0), so that embedding is a constant row.
    word = g.quantised("word", *src.weight(PREFIX + "embeddings.word_embeddings.weight"))
    position = g.quantised("position", *src.weight(PREFIX + "embeddings.position_embeddings.weight"))
    g.node("Gather", [word, "input_ids"], ["word_rows"])
    g.node("Gather", [position, "position_ids"], ["position_rows"])
    types = src.tensor(PREFIX + "embeddings.token_type_embeddings.weight")
    g.const("type0", types[0])
    g.const("emb_gamma", src.tensor(PREFIX + "embeddings.LayerNorm.weight"))
    g.const("emb_beta", src.tensor(PREFIX + "embeddings.LayerNorm.bias"))
    g.node("Add", ["word_rows", "position_rows"], ["emb_sum"])
    g.node("Add", ["emb_sum", "type0"], ["emb_typed"])
    g.layer_norm("emb_typed", "emb_gamma", "emb_beta", "x0")

    x = "x0"
    for i in range(LAYERS):
        layer = f"{PREFIX}encoder.layer.{i}."
        q = [src.dense(layer + f"attention.self.{part}.bias") for part in ("query", "key", "value")]
        wqkv = g.quantised(f"l{i}_qkv", np.concatenate([p[0] for p in q], axis=1),
                           np.concatenate([p[1] for p in q], axis=1))
        g.const(f"l{i}_qkv_bias", np.concatenate([p[2] for p in q]))
        wo, so, bo = src.dense(layer + "attention.output.dense.bias")
        w1, s1, b1 = src.dense(layer + "intermediate.dense.bias")
        w2, s2, b2 = src.dense(layer + "output.dense.bias")
        wo, w1, w2 = g.quantised(f"l{i}_out", wo, so), g.quantised(f"l{i}_up", w1, s1), g.quantised(f"l{i}_down", w2, s2)
        for name, value in [(f"l{i}_out_bias", bo), (f"l{i}_up_bias", b1), (f"l{i}_down_bias", b2)]:
            g.const(name, value)
        for name, key in [(f"l{i}_ln1_gamma", "attention.output.LayerNorm.weight"),
                          (f"l{i}_ln1_beta", "attention.output.LayerNorm.bias"),
                          (f"l{i}_ln2_gamma", "output.LayerNorm.weight"),
                          (f"l{i}_ln2_beta", "output.LayerNorm.bias")]:
            g.const(name, src.tensor(layer + key))

        # Padded for attention: row `tokens` of [x; 0] is the zero row that
        # padding slots point at.
        g.node("Concat", [x, "zero_row"], [f"l{i}_with_zero"], axis=0)
        g.node("Gather", [f"l{i}_with_zero", "unpad_index"], [f"l{i}_padded"])
        g.node("Attention", [f"l{i}_padded", wqkv, f"l{i}_qkv_bias", "lengths"], [f"l{i}_context"],
               ms=True, num_heads=HEADS)
        # Packed again for everything after it.
        g.node("Reshape", [f"l{i}_context", "rows"], [f"l{i}_context_rows"])
        g.node("Gather", [f"l{i}_context_rows", "pack_index"], [f"l{i}_context_packed"])
        g.node("Gemm", [f"l{i}_context_packed", wo, f"l{i}_out_bias"], [f"l{i}_out_proj"])
        g.node("Add", [f"l{i}_out_proj", x], [f"l{i}_residual1"])
        g.layer_norm(f"l{i}_residual1", f"l{i}_ln1_gamma", f"l{i}_ln1_beta", f"l{i}_attended")
        g.node("MatMul", [f"l{i}_attended", w1], [f"l{i}_up_proj"])
        g.node("BiasGelu", [f"l{i}_up_proj", f"l{i}_up_bias"], [f"l{i}_gelu"], ms=True)
        g.node("Gemm", [f"l{i}_gelu", w2, f"l{i}_down_bias"], [f"l{i}_down_proj"])
        g.node("Add", [f"l{i}_down_proj", f"l{i}_attended"], [f"l{i}_residual2"])
        g.layer_norm(f"l{i}_residual2", f"l{i}_ln2_gamma", f"l{i}_ln2_beta", f"x{i + 1}")
        x = f"x{i + 1}"
    g.node("Identity", [x], ["token_states"])

    graph = H.make_graph(
        g.nodes, "all-MiniLM-L6-v2, packed",
        [H.make_tensor_value_info("input_ids", TensorProto.INT64, ["tokens"]),
         H.make_tensor_value_info("position_ids", TensorProto.INT64, ["tokens"]),
         H.make_tensor_value_info("lengths", TensorProto.INT32, ["batch"]),
         H.make_tensor_value_info("unpad_index", TensorProto.INT64, ["batch", "sequence"]),
         H.make_tensor_value_info("pack_index", TensorProto.INT64, ["tokens"])],
        [H.make_tensor_value_info("token_states", TensorProto.FLOAT, ["tokens", HIDDEN])],
        g.inits)
    model = H.make_model(graph, producer_name="cordon models/pack.py",
                         opset_imports=[H.make_opsetid("", 17), H.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: pack.py SOURCE.onnx OUTPUT.onnx")
    model = build(Source(onnx.load(sys.argv[1])))
    onnx.save(model, sys.argv[2])


if __name__ == "__main__":
    main()
