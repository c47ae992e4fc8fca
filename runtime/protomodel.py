"""Just enough of ONNX's protobuf to rewrite a graph's nodes and constants, with the standard library and
numpy (the base install has no `onnx` package). Nodes and tensors are parsed into small records and
written back; every field this module does not name (attributes, shapes, docs) travels as raw bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from picogpt.errors import PicoError
from picogpt.runtime.webgraph import fields, ld, payload, read_varint, string_of, varint

MODEL_GRAPH, MODEL_METADATA = 7, 14
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_OUTPUT, GRAPH_VALUE_INFO = 1, 5, 12, 13
NODE_INPUT, NODE_OUTPUT, NODE_NAME, NODE_OP, NODE_ATTRIBUTE, NODE_DOMAIN = 1, 2, 3, 4, 5, 7
T_DIMS, T_TYPE, T_FLOATS, T_INT32S, T_INT64S, T_NAME, T_RAW, T_LOCATION = 1, 2, 4, 5, 7, 8, 9, 14
# TensorProto.DataType -> numpy dtype, for the types quantized linears use
DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64}
CODES = {np.dtype(v): k for k, v in DTYPES.items()}


@dataclass
class Node:
    op: str
    inputs: list[str]
    outputs: list[str]
    name: str = ""
    domain: str = ""
    attributes: list[bytes] = field(default_factory=list)  # serialized AttributeProto fields, kept as they are
    extra: list[bytes] = field(default_factory=list)  # any other field (doc string, metadata), kept as it is

    def to_bytes(self) -> bytes:
        out = b"".join(ld(NODE_INPUT, s.encode()) for s in self.inputs)
        out += b"".join(ld(NODE_OUTPUT, s.encode()) for s in self.outputs)
        out += ld(NODE_NAME, self.name.encode()) + ld(NODE_OP, self.op.encode())
        out += b"".join(self.attributes)
        return out + (ld(NODE_DOMAIN, self.domain.encode()) if self.domain else b"") + b"".join(self.extra)

    def attribute_int(self, name: str, default: int) -> int:
        for raw in self.attributes:
            attr = payload(raw)
            if string_of(attr, 1) == name:
                return next((read_varint(f, 1)[0] for n, w, f in fields(attr) if n == 3 and w == 0), default)
        return default


def int_attribute(name: str, value: int) -> bytes:
    """A node's attribute field (AttributeProto: name 1, i 3, type 20 = INT)."""
    return ld(NODE_ATTRIBUTE, ld(1, name.encode()) + varint(3 << 3) + varint(value) + varint(20 << 3) + varint(2))


def parse_node(message: bytes) -> Node:
    node = Node("", [], [])
    for number, wire, f in fields(message):
        if number == NODE_ATTRIBUTE:
            node.attributes.append(f)
        elif wire == 2 and number in (NODE_INPUT, NODE_OUTPUT):
            (node.inputs if number == NODE_INPUT else node.outputs).append(payload(f).decode())
        elif wire == 2 and number in (NODE_NAME, NODE_OP, NODE_DOMAIN):
            setattr(node, {NODE_NAME: "name", NODE_OP: "op", NODE_DOMAIN: "domain"}[number], payload(f).decode())
        else:
            node.extra.append(f)
    return node


def _packed(f: bytes, wire: int, fmt: str | None) -> list:
    """Values of one repeated scalar field occurrence (packed or not)."""
    if wire == 0:
        return [read_varint(f, read_varint(f, 0)[1])[0]]
    data = payload(f)
    if fmt is not None:
        return list(struct.unpack(f"<{len(data) // struct.calcsize(fmt)}{fmt}", data))
    values, i = [], 0
    while i < len(data):
        v, i = read_varint(data, i)
        values.append(v)
    return values


def parse_tensor(message: bytes) -> tuple[str, np.ndarray]:
    """(name, value) of a TensorProto stored in the file (raw_data, float_data, int32_data or int64_data)."""
    dims, dtype, name, raw, floats, ints = [], 1, "", None, [], []
    for number, wire, f in fields(message):
        if number == T_DIMS:
            dims += _packed(f, wire, None)
        elif number == T_TYPE:
            dtype = read_varint(f, 1)[0]
        elif number == T_NAME:
            name = payload(f).decode()
        elif number == T_RAW:
            raw = payload(f)
        elif number == T_FLOATS:
            floats += _packed(f, wire, "f") if wire == 2 else [struct.unpack("<f", f[-4:])[0]]
        elif number in (T_INT32S, T_INT64S):
            ints += _packed(f, wire, None)
        elif number == T_LOCATION and read_varint(f, 1)[0] == 1:
            raise PicoError(f"tensor {name or '?'} is stored in an external file: give a self-contained .onnx")
    if dtype not in DTYPES:
        raise PicoError(f"tensor {name}: data type {dtype} is not one a PicoGPT file uses")
    np_type = DTYPES[dtype]
    if raw is not None:
        value = np.frombuffer(raw, dtype=np.dtype(np_type).newbyteorder("<")).astype(np_type)
    else:
        # int32_data/int64_data hold negatives as 64-bit two's complement varints
        signed = [v - 2**64 if v >= 2**63 else v for v in ints]
        value = np.array(floats if dtype == 1 else signed, dtype=np.float32 if dtype == 1 else np.int64).astype(np_type)
    return name, value.reshape(dims)


def tensor_bytes(name: str, value: np.ndarray) -> bytes:
    value = np.asarray(value, order="C")  # not ascontiguousarray: it turns a scalar into shape [1]
    dims = b"".join(varint(T_DIMS << 3) + varint(d) for d in value.shape)
    return dims + varint(T_TYPE << 3) + varint(CODES[value.dtype]) + ld(T_NAME, name.encode()) + \
        ld(T_RAW, value.astype(value.dtype.newbyteorder("<")).tobytes())


@dataclass
class Graph:
    """A parsed GraphProto: nodes and initializers as records, every other field as raw bytes."""

    nodes: list[Node]
    constants: dict[str, np.ndarray]
    other: list[tuple[int, bytes]]  # (field number, raw field) of everything else, in file order

    @classmethod
    def parse(cls, graph: bytes) -> Graph:
        nodes, constants, other = [], {}, []
        for number, _, f in fields(graph):
            if number == GRAPH_NODE:
                nodes.append(parse_node(payload(f)))
            elif number == GRAPH_INITIALIZER:
                name, value = parse_tensor(payload(f))
                constants[name] = value
            else:
                other.append((number, f))
        return cls(nodes, constants, other)

    def to_bytes(self) -> bytes:
        """The graph with unused constants and stale value_info entries left out."""
        used = {i for n in self.nodes for i in n.inputs}
        made = {o for n in self.nodes for o in n.outputs}
        kept = [f for number, f in self.other
                if number != GRAPH_VALUE_INFO or string_of(payload(f), 1) in made | used]
        inits = [ld(GRAPH_INITIALIZER, tensor_bytes(k, v)) for k, v in self.constants.items() if k in used]
        return b"".join(ld(GRAPH_NODE, n.to_bytes()) for n in self.nodes) + b"".join(inits) + b"".join(kept)


def edit_model(model: bytes, graph_edit=None, metadata: dict[str, str] | None = None) -> bytes:
    """The ModelProto bytes with `graph_edit(Graph)` applied to the graph and `metadata` values replacing the
    metadata_props of the same keys, or added after them (other keys kept)."""
    parts, seen = [], set()
    for number, _, f in fields(model):
        if number == MODEL_GRAPH and graph_edit is not None:
            graph = Graph.parse(payload(f))
            graph_edit(graph)
            f = ld(MODEL_GRAPH, graph.to_bytes())
        elif number == MODEL_METADATA and metadata:
            key = string_of(payload(f), 1)
            if key in metadata:
                seen.add(key)
                f = ld(MODEL_METADATA, ld(1, key.encode()) + ld(2, metadata[key].encode()))
        parts.append(f)
    parts += [ld(MODEL_METADATA, ld(1, k.encode()) + ld(2, v.encode())) for k, v in (metadata or {}).items()
              if k not in seen]
    return b"".join(parts)


def read_metadata(model: bytes) -> dict[str, str]:
    return {string_of(payload(f), 1): string_of(payload(f), 2) for n, _, f in fields(model) if n == MODEL_METADATA}
