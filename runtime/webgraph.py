"""The web variant of a fused PicoGPT graph: the cache's new rows as outputs, not the whole cache.

onnxruntime-web's WASM backend has no IOBinding (and its preallocated CPU outputs are not copied back),
so the fused layout's in-place cache cannot work there: every `present_*` output (2 MB in all for the
bundled model) would be copied out of the WASM heap into fresh JS arrays at every step. This variant
keeps the graph and adds, per cache output, a `Slice` of the rows just written (`web_row_start` ..
`web_row_end` along the sequence axis), and one `Concat` of those slices: a single small output
`new_rows` [2 * n_layer, n_head, new, head_size] (batch 1; layer i's key at 2i, value at 2i + 1) replaces
the 2 * n_layer `present_*`. The page writes the rows into its own cache buffers and feeds those back as
`past_*`. (One output instead of 16 also saves ORT-web ~0.1 ms of per-output handling a step.)

Edited as protobuf bytes, with nothing but the standard library: the base install has no `onnx` package.
Only the graph's node, initializer, input and output lists are touched; the weights are copied as they are.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from picogpt.errors import PicoError

MODEL_GRAPH, GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_OUTPUT = 7, 1, 5, 11, 12
INT64 = 7  # TensorProto.DataType
ROW_START, ROW_END, SEQ_AXIS, NEW_ROWS = "web_row_start", "web_row_end", "web_seq_axis", "new_rows"


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf):
            raise PicoError("the model file is truncated (protobuf varint)")
        b = buf[i]
        value |= (b & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not b & 0x80:
            return value, i


def fields(buf: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(field number, wire type, raw bytes of the whole field) of each top-level field of a message."""
    i = 0
    while i < len(buf):
        start = i
        key, i = read_varint(buf, i)
        wire = key & 7
        if wire == 0:
            _, i = read_varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            size, i = read_varint(buf, i)
            i += size
        else:
            raise PicoError(f"the model file has an unexpected protobuf wire type {wire}")
        yield key >> 3, wire, buf[start:i]


def payload(field: bytes) -> bytes:
    """The contents of a length-delimited field (its key and length stripped)."""
    _, i = read_varint(field, 0)
    _, i = read_varint(field, i)
    return field[i:]


def ld(number: int, data: bytes) -> bytes:
    """A length-delimited field."""
    return varint(number << 3 | 2) + varint(len(data)) + data


def string_of(message: bytes, number: int) -> str:
    """The first string field `number` of a message ('' if absent)."""
    return next((payload(f).decode() for n, w, f in fields(message) if n == number and w == 2), "")


def tensor_info(name: str, elem_type: int, dims: list[int | str]) -> bytes:
    """A ValueInfoProto: name, tensor type, shape (an int is a fixed size, a str a symbolic one)."""
    shape = b"".join(ld(1, varint(1 << 3) + varint(d) if isinstance(d, int) else ld(2, d.encode())) for d in dims)
    tensor_type = varint(1 << 3) + varint(elem_type) + ld(2, shape)
    return ld(1, name.encode()) + ld(2, ld(1, tensor_type))


def node(op: str, inputs: list[str], outputs: list[str], name: str) -> bytes:
    """A NodeProto of the default domain."""
    return (b"".join(ld(1, s.encode()) for s in inputs) + b"".join(ld(2, s.encode()) for s in outputs)
            + ld(3, name.encode()) + ld(4, op.encode()))


def int64_initializer(name: str, values: list[int]) -> bytes:
    """A TensorProto of int64 values, shape [len(values)]."""
    return (varint(1 << 3) + varint(len(values)) + varint(2 << 3) + varint(INT64) + ld(8, name.encode())
            + ld(9, struct.pack(f"<{len(values)}q", *values)))


def concat_axis0() -> bytes:
    """An AttributeProto `axis = 0` (name 1, i 3, type 20 = INT)."""
    return ld(1, b"axis") + varint(3 << 3) + varint(0) + varint(20 << 3) + varint(2)


def new_rows_graph(graph: bytes, n_layer: int, shape: list[int | str]) -> bytes:
    """The GraphProto with the present_* outputs replaced by one Concat of Slices of their new rows."""
    presents = {f"present_{kind}_{i}": f"web_new_{kind}_{i}" for i in range(n_layer) for kind in ("key", "value")}
    kept, outputs_seen = [], set()
    for number, _, field in fields(graph):
        if number == GRAPH_OUTPUT:
            name = string_of(payload(field), 1)
            if name in presents:
                outputs_seen.add(name)
                continue
        kept.append(field)
    if outputs_seen != set(presents):
        raise PicoError("the fused graph lacks some present_* outputs: cannot build its web variant")
    extra = [ld(GRAPH_NODE, node("Slice", [p, ROW_START, ROW_END, SEQ_AXIS], [n], f"web_slice_{n}"))
             for p, n in presents.items()]
    concat = node("Concat", list(presents.values()), [NEW_ROWS], "web_concat_new_rows") + ld(5, concat_axis0())
    extra.append(ld(GRAPH_NODE, concat))
    extra.append(ld(GRAPH_INITIALIZER, int64_initializer(SEQ_AXIS, [2])))
    extra += [ld(GRAPH_INPUT, tensor_info(name, INT64, [1])) for name in (ROW_START, ROW_END)]
    extra.append(ld(GRAPH_OUTPUT, tensor_info(NEW_ROWS, 1, shape)))  # 1 = float
    return b"".join(kept) + b"".join(extra)


def web_variant(model: bytes, n_layer: int, n_head: int, head_size: int) -> bytes:
    """The ModelProto bytes of a fused PicoGPT file with new-rows outputs (see the module docstring)."""
    parts, found = [], False
    for number, _, field in fields(model):
        if number == MODEL_GRAPH:
            field = ld(MODEL_GRAPH, new_rows_graph(payload(field), n_layer, [2 * n_layer, n_head, "new", head_size]))
            found = True
        parts.append(field)
    if not found:
        raise PicoError("the model file has no graph")
    return b"".join(parts)


TENSOR_DATA_LOCATION, EXTERNAL = 14, 1  # TensorProto.data_location = EXTERNAL


def has_external_data(model: bytes) -> bool:
    """True if an initializer of the graph keeps its values in a separate file (TensorProto data_location);
    False for bytes that are not a model (the loader says what is wrong with them)."""
    try:
        return any(_external_initializers(model))
    except (PicoError, IndexError):
        return False


def _external_initializers(model: bytes) -> Iterator[bool]:
    for number, _, field in fields(model):
        if number != MODEL_GRAPH:
            continue
        for n, _, init in fields(payload(field)):
            if n != GRAPH_INITIALIZER:
                continue
            for k, wire, value in fields(payload(init)):
                if k == TENSOR_DATA_LOCATION and wire == 0:
                    yield read_varint(value, 1)[0] == EXTERNAL
