"""ONNX Runtime's fused BERT operators, emitted by structure where its optimizer's patterns miss bertc's graph.

ONNX Runtime's transformer optimizer (model_type bert_tf) fuses FastGelu and LayerNormalization in the graph tf2onnx
writes from bertc's rewritten BERT, but not Attention or SkipLayerNormalization: google-research's layout runs the
encoder on [B*L, H] (its residual adds are rank 2, which the SkipLayerNormalization fusion refuses) and its mask
paths differ from the optimizer's three patterns. bertc knows the structure, so it rewrites each layer here:

- attention: Q, K, V dense (MatMul + bias) -> heads -> QK^T (x scale) + mask bias -> Softmax -> x V -> merge heads
  becomes one `com.microsoft.Attention` on [B, L, H] with the three weights packed into [H, 3H], the 2-D 0/1 mask
  the bias was made from as its mask_index, the scale and the mask's filter value read from the graph;
- residual + LayerNorm: LayerNormalization(Add(Add(MatMul(x, W), b), residual)) becomes
  `com.microsoft.SkipLayerNormalization(MatMul(x, W), residual, gamma, beta, b)`.

A site that does not match exactly is left as it is (the counts say how many fused). The ops are ONNX Runtime's
(contrib ops, CPU kernels): the artifact still serves with plain onnxruntime.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

MS_DOMAIN = "com.microsoft"


class _Graph:
    """Index of an ONNX graph: producers, consumers, initializers; edits collected and applied at the end."""

    def __init__(self, model: Any):
        self.model, self.graph = model, model.graph
        self.producer = {output: node for node in self.graph.node for output in node.output}
        self.consumers: dict[str, list] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.initializers = {entry.name: entry for entry in self.graph.initializer}
        self.added: list = []
        self.new_initializers: list = []
        self.outputs = {entry.name for entry in self.graph.output}

    def parent(self, node, index: int, op: str):
        """The node producing input `index` of `node`, if its op is `op`."""
        if index >= len(node.input):
            return None
        found = self.producer.get(node.input[index])
        return found if found is not None and found.op_type == op else None

    def constant(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def attribute(self, node, name: str, default=None):
        from onnx import helper

        found = [entry for entry in node.attribute if entry.name == name]
        return helper.get_attribute_value(found[0]) if found else default

    def initializer(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.new_initializers.append(numpy_helper.from_array(value, name))
        return name

    def add(self, op: str, inputs: list[str], name: str, domain: str = "", **attributes) -> str:
        from onnx import helper

        output = f"{name}:0"
        self.added.append(helper.make_node(op, inputs, [output], name=name, domain=domain, **attributes))
        return output

    def apply(self, replaced: dict[str, str]) -> None:
        """Rewire every reader of replaced[old] to the new tensor, add the new nodes, drop what nothing reads."""
        for node in list(self.graph.node) + self.added:
            for position, name in enumerate(node.input):
                if name in replaced:
                    node.input[position] = replaced[name]
        self.graph.node.extend(self.added)
        self.graph.initializer.extend(self.new_initializers)
        _drop_dead(self.graph)
        _sort_topologically(self.graph)


def _drop_dead(graph) -> None:
    """Remove the nodes whose outputs nothing reads (not a graph output), and initializers nothing reads. Deleted
    by index: remove() finds an entry by comparing messages, weights included."""
    while True:
        read = {name for node in graph.node for name in node.input} | {entry.name for entry in graph.output}
        dead = [index for index, node in enumerate(graph.node) if not any(output in read for output in node.output)]
        if not dead:
            break
        _delete(graph.node, dead)
    read = {name for node in graph.node for name in node.input}
    _delete(graph.initializer, [index for index, entry in enumerate(graph.initializer) if entry.name not in read])


def _delete(field, indices: list[int]) -> None:
    for index in reversed(indices):
        del field[index]


def _sort_topologically(graph) -> None:
    """ONNX wants every node after the producers of its inputs."""
    available = {entry.name for entry in graph.input} | {entry.name for entry in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [all(name in available for name in node.input) for node in pending]
        if not any(ready):
            raise ValueError(f"ONNX graph has a cycle or a dangling input near {pending[0].name}")
        for node, now in zip(pending, ready):
            if now:
                ordered.append(node)
                available.update(node.output)
        pending = [node for node, now in zip(pending, ready) if not now]
    del graph.node[:]
    graph.node.extend(ordered)


@dataclasses.dataclass
class _Projection:
    """One of Q, K, V as the attention reads it: x [B*L, H] -> Reshape [B, L, heads, d] -> Transpose; and, where x
    is MatMul(source, weight) + bias, the dense layer itself (what Attention packs)."""

    heads_input: str  # x, [B*L, H]: the projected tensor (length=pack: gathered back to [B*L, H])
    shape4: str  # the Reshape's shape tensor: [B, L, heads, d]
    matmul: str = ""  # the MatMul node's name ("": not a dense layer right before the heads)
    source: str = ""  # the dense layer's input
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None


def _projection(graph: _Graph, transpose, perm: list[int]) -> _Projection | None:
    if transpose is None or transpose.op_type != "Transpose" or graph.attribute(transpose, "perm") != perm:
        return None
    reshape = graph.parent(transpose, 0, "Reshape")
    if reshape is None:
        return None
    found = _Projection(reshape.input[0], reshape.input[1])
    add = graph.parent(reshape, 0, "Add")
    matmul = add and graph.parent(add, 0, "MatMul")
    bias = add and graph.constant(add.input[1])
    weight = matmul and graph.constant(matmul.input[1])
    if matmul is not None and bias is not None and weight is not None and weight.ndim == 2:
        if bias.shape == (weight.shape[1],):
            found = dataclasses.replace(found, matmul=matmul.name, source=matmul.input[0], weight=weight, bias=bias)
    return found


def _mask_of(graph: _Graph, bias: str) -> tuple[str, float] | None:
    """The 0/1 mask [B, L] a [B, 1, 1, L] additive bias was made from: (1 - Cast(Reshape(mask))) x value."""
    mul = graph.producer.get(bias)
    if mul is None or mul.op_type != "Mul":
        return None
    for sub_index, value_index in ((0, 1), (1, 0)):
        sub, value = graph.parent(mul, sub_index, "Sub"), graph.constant(mul.input[value_index])
        if sub is None or value is None or value.size != 1:
            continue
        one = graph.constant(sub.input[0])
        cast = graph.parent(sub, 1, "Cast") or _key_mask(graph, graph.parent(sub, 1, "Unsqueeze"))
        reshape = cast and graph.parent(cast, 0, "Reshape")
        if one is not None and one.size == 1 and float(one.reshape(-1)[0]) == 1.0 and reshape is not None:
            return reshape.input[0], float(value.reshape(-1)[0])
    return None


def _key_mask(graph: _Graph, unsqueeze):
    """google-research's [B, L, L] mask, Unsqueeze(Expand(1) x Cast(Reshape(mask, [B, 1, L]))): every query row is the
    key mask, so it is the 2-D mask's Cast."""
    product = unsqueeze and graph.parent(unsqueeze, 0, "Mul")
    for ones_index in (0, 1):
        expand = product and graph.parent(product, ones_index, "Expand")
        one = expand and graph.constant(expand.input[0])
        cast = product and graph.parent(product, 1 - ones_index, "Cast")
        if one is not None and one.size == 1 and float(one.reshape(-1)[0]) == 1.0 and cast is not None:
            return cast
    return None


def _attention_sites(graph: _Graph) -> Iterator[dict]:
    for softmax in [node for node in graph.graph.node if node.op_type == "Softmax"]:
        if graph.attribute(softmax, "axis", -1) != -1:
            continue
        add = graph.parent(softmax, 0, "Add")
        context = graph.consumers.get(softmax.output[0], [])
        if add is None or len(context) != 1 or context[0].op_type != "MatMul":
            continue
        scores, scale = graph.parent(add, 0, "MatMul"), None
        if scores is None:
            mul = graph.parent(add, 0, "Mul")
            factor = mul and graph.constant(mul.input[1])
            scores = mul and graph.parent(mul, 0, "MatMul")
            scale = float(factor.reshape(-1)[0]) if factor is not None and factor.size == 1 else None
            if scale is None:
                continue
        mask = _mask_of(graph, add.input[1])
        if scores is None or mask is None:
            continue
        q = _projection(graph, graph.producer.get(scores.input[0]), [0, 2, 1, 3])
        k = _projection(graph, graph.producer.get(scores.input[1]), [0, 2, 3, 1])
        v = _projection(graph, graph.producer.get(context[0].input[1]), [0, 2, 1, 3])
        merge = graph.consumers.get(context[0].output[0], [])
        if q is None or k is None or v is None or len(merge) != 1 or graph.attribute(merge[0], "perm") != [0, 2, 1, 3]:
            continue
        reshape = graph.consumers.get(merge[0].output[0], [])
        if len(reshape) != 1 or reshape[0].op_type != "Reshape" or len({q.shape4, k.shape4, v.shape4}) != 1:
            continue
        yield {"q": q, "k": k, "v": v, "scale": scale, "mask": mask, "out": reshape[0], "name": softmax.name}


def fuse_attention(
    model: Any, heads: int, together: Callable[[list[str]], bool] = lambda names: True
) -> dict[str, str]:
    """Each matched attention -> one com.microsoft.Attention; returns {Q, K or V MatMul's name: its Attention's}.
    `together(the three MatMul names)`: whether they may become one node (int8 quantizes a node whole)."""
    graph, replaced, packed = _Graph(model), {}, {}
    for number, site in enumerate(_attention_sites(graph)):
        q, k, v, name = site["q"], site["k"], site["v"], f"bertc_attention_{number}"
        if q.weight is None or k.weight is None or v.weight is None or len({q.source, k.source, v.source}) != 1:
            continue  # not three dense layers of one input right before the heads (length=pack: MultiHeadAttention)
        if q.weight.shape[1] % heads or q.weight.shape != k.weight.shape or q.weight.shape != v.weight.shape:
            continue
        if not together([q.matmul, k.matmul, v.matmul]):
            continue
        weight = graph.initializer(f"{name}/qkv_weight", np.concatenate([q.weight, k.weight, v.weight], axis=1))
        bias = graph.initializer(f"{name}/qkv_bias", np.concatenate([q.bias, k.bias, v.bias]))  # type: ignore[list-item]
        x3 = _three_d(graph, q.source, q.shape4, name)
        fused = graph.add(
            "Attention", [x3, weight, bias, _mask_int32(graph, site, name)], name, **_attributes(site, heads)
        )
        out = site["out"]
        replaced[out.output[0]] = graph.add("Reshape", [fused, out.input[1]], f"{name}/output2d")
        packed.update({projection.matmul: name for projection in (q, k, v)})
    if packed:
        graph.apply(replaced)
        _declare_ms_domain(model)
    return packed


def fuse_multi_head_attention(model: Any, heads: int) -> int:
    """Each attention left (its Q, K, V not dense layers of one input right before the heads: length=pack gathers
    them back from the packed tokens) -> one com.microsoft.MultiHeadAttention on [B, L, H]; returns how many."""
    graph, replaced = _Graph(model), {}
    for number, site in enumerate(_attention_sites(graph)):
        name = f"bertc_multi_head_attention_{number}"
        q, k, v = (_three_d(graph, site[key].heads_input, site["q"].shape4, f"{name}/{key}") for key in "qkv")
        inputs = [q, k, v, "", _mask_int32(graph, site, name)]
        fused = graph.add("MultiHeadAttention", inputs, name, **_attributes(site, heads))
        replaced[site["out"].output[0]] = graph.add("Reshape", [fused, site["out"].input[1]], f"{name}/output2d")
    if replaced:
        graph.apply(replaced)
        _declare_ms_domain(model)
    return len(replaced)


def _three_d(graph: _Graph, tensor: str, shape4: str, name: str) -> str:
    """[B*L, H] -> [B, L, H], B and L read from the heads' shape tensor [B, L, heads, d]."""
    starts = graph.initializer(f"{name}/starts", np.array([0], np.int64))
    ends = graph.initializer(f"{name}/ends", np.array([2], np.int64))
    rest = graph.initializer(f"{name}/rest", np.array([-1], np.int64))
    dims = graph.add("Slice", [shape4, starts, ends], f"{name}/batch_seq_dims")
    return graph.add("Reshape", [tensor, graph.add("Concat", [dims, rest], f"{name}/shape3", axis=0)], f"{name}/to3d")


def _mask_int32(graph: _Graph, site: dict, name: str) -> str:
    return graph.add("Cast", [site["mask"][0]], f"{name}/mask_int32", to=6)  # int32: 0 padding, 1 token


def _attributes(site: dict, heads: int) -> dict:
    """The fused op's attributes from the graph: the scale is the Mul before the mask (google-research), or 1
    (mask.fold_scale moved it into Q); the filter value is the mask bias's."""
    scale = site["scale"] if site["scale"] is not None else 1.0
    return {"domain": MS_DOMAIN, "num_heads": heads, "mask_filter_value": site["mask"][1], "scale": scale}


def fuse_skip_layer_norm(model: Any) -> int:
    """LayerNormalization(Add(Add(MatMul, bias), residual)) -> com.microsoft.SkipLayerNormalization; how many."""
    graph, replaced, count = _Graph(model), {}, 0
    for number, norm in enumerate([node for node in graph.graph.node if node.op_type == "LayerNormalization"]):
        residual_add = graph.parent(norm, 0, "Add")
        if residual_add is None or graph.attribute(norm, "axis", -1) != -1 or len(norm.input) < 3:
            continue
        for dense_index in (0, 1):
            bias_add = graph.parent(residual_add, dense_index, "Add")
            matmul = bias_add and graph.parent(bias_add, 0, "MatMul")
            bias = bias_add and graph.constant(bias_add.input[1])
            if matmul is None or bias is None or bias.ndim != 1:
                continue
            if (
                len(graph.consumers.get(bias_add.output[0], [])) != 1
                or len(graph.consumers[residual_add.output[0]]) != 1
            ):
                continue
            skip = residual_add.input[1 - dense_index]
            epsilon = graph.attribute(norm, "epsilon", 1e-5)
            name = f"bertc_skip_layer_norm_{number}"
            fused = graph.add(
                "SkipLayerNormalization",
                [matmul.output[0], skip, norm.input[1], norm.input[2], bias_add.input[1]],
                name,
                domain=MS_DOMAIN,
                epsilon=epsilon,
            )
            replaced[norm.output[0]] = fused
            count += 1
            break
    if count:
        graph.apply(replaced)
        _declare_ms_domain(model)
    return count


def _declare_ms_domain(model: Any) -> None:
    from onnx import helper

    if not any(entry.domain == MS_DOMAIN for entry in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
