"""llama.cpp as a peer engine: the checkpoint as a GPT-2 GGUF (f32, Q8_0, Q4_0), run by llama-cpp-python.

The model is nanoGPT's GPT-2 (biases, tied lm_head, learned absolute positions) plus the slot: position 0
of a window holds a context vector instead of a character. The GGUF gets one extra token, the slot, whose
embedding row is zeros, which is exactly the first window's zero context vector, so the first window's
logits must match torch's (checked before timing). llama.cpp cannot take a carried context vector: when a
window is full it restarts its cache with [slot, last K characters] (K = overlap, default 32), the slot
still zeros. GPT-2's positions are absolute, so a window can never pass n_positions rows.

    CMAKE_ARGS="-DGGML_NATIVE=ON" pip install -e '.[peer]'   (llama-cpp-python compiles llama.cpp: minutes)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from picogpt.config import GPTConfig
from picogpt.errors import PicoError
from picogpt.windows import resolve_overlap

QUANTS = ("f32", "q8_0", "q4_0")
ENGINES = tuple(f"llamacpp-{q}" for q in QUANTS)
F32_MAX_LOGIT_DIFF = 1e-2  # relative to the largest logit
INSTALL = ("llama.cpp engines skipped: they need llama-cpp-python and gguf, e.g. CMAKE_ARGS=\"-DGGML_NATIVE=ON\" "
           "pip install llama-cpp-python gguf (it compiles llama.cpp; several minutes)")
LINEARS = (("attn.c_attn", "attn_qkv"), ("attn.c_proj", "attn_output"), ("mlp.c_fc", "ffn_up"),
           ("mlp.c_proj", "ffn_down"))


def available() -> str | None:
    """None when llama_cpp and gguf import, else the one line saying how to install them."""
    import importlib.util

    missing = [m for m in ("llama_cpp", "gguf") if importlib.util.find_spec(m) is None]
    return INSTALL if missing else None


def _tensors(model, slot_row: bool = True) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, fp32 array in torch's [out, in] layout) of every tensor, the slot's zero row appended."""
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    c = model.config
    wte = sd["transformer.wte.weight"]
    if slot_row:
        wte = np.concatenate([wte, np.zeros((1, c.n_embd), np.float32)])
    out = [("token_embd.weight", wte), ("position_embd.weight", sd["transformer.wpe.weight"]),
           ("output_norm.weight", sd["transformer.ln_f.weight"]),
           ("output_norm.bias", sd.get("transformer.ln_f.bias", np.zeros(c.n_embd, np.float32))),
           ("output.weight", wte)]  # tied, written out as convert_hf_to_gguf does for GPT-2
    for i in range(c.n_layer):
        p = f"transformer.h.{i}"
        for ours, theirs in (("ln_1", "attn_norm"), ("ln_2", "ffn_norm")):
            out += [(f"blk.{i}.{theirs}.weight", sd[f"{p}.{ours}.weight"]),
                    (f"blk.{i}.{theirs}.bias", sd.get(f"{p}.{ours}.bias", np.zeros(c.n_embd, np.float32)))]
        for ours, theirs in LINEARS:
            w = sd[f"{p}.{ours}.weight"]
            out += [(f"blk.{i}.{theirs}.weight", w),
                    (f"blk.{i}.{theirs}.bias", sd.get(f"{p}.{ours}.bias", np.zeros(w.shape[0], np.float32)))]
    return out


def write_gguf(model, tokenizer, path: Path, quant: str = "f32", overlap: int | None = None) -> Path:
    """Write `model` (a picogpt GPT) as a GPT-2 GGUF. Q8_0/Q4_0 quantize the block linears; embeddings,
    the (tied) output matrix, norms and biases stay f32, as PicoGPT's int8 keeps its lm_head fp32."""
    import logging

    import gguf

    logging.getLogger("gguf").setLevel(logging.WARNING)  # one INFO line per file written otherwise
    c: GPTConfig = model.config
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_name("picogpt")
    w.add_context_length(c.n_positions)
    w.add_embedding_length(c.n_embd)
    w.add_feed_forward_length(4 * c.n_embd)
    w.add_block_count(c.n_layer)
    w.add_head_count(c.n_head)
    w.add_layer_norm_eps(1e-5)
    w.add_file_type({"f32": 0, "q8_0": 7, "q4_0": 2}[quant])
    # An SPM vocabulary of the characters and the slot: ids go in directly, llama.cpp never tokenizes here.
    w.add_tokenizer_model("llama")
    tokens = [t if t else f"<{i}>" for i, t in enumerate(tokenizer.vocab)] + ["<slot>"]
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types([gguf.TokenType.NORMAL] * (len(tokens) - 1) + [gguf.TokenType.CONTROL])
    w.add_uint32("picogpt.overlap", resolve_overlap(overlap, model.config.context_len))
    qtype = {"f32": None, "q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[quant]
    for name, value in _tensors(model):
        if qtype is not None and name.startswith("blk.") and name.endswith(".weight") and value.ndim == 2 \
                and "norm" not in name:
            w.add_tensor(name, gguf.quants.quantize(value, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, np.ascontiguousarray(value, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def gguf_config(path: str | Path) -> GPTConfig:
    """The PicoGPT config a GGUF written by `write_gguf` describes (its vocabulary less the slot)."""
    import gguf

    fields = gguf.GGUFReader(str(path)).fields

    def get(key: str) -> int:
        return int(fields[key].parts[-1][0])

    return GPTConfig(context_len=get("gpt2.context_length") - 1, n_layer=get("gpt2.block_count"),
                     n_head=get("gpt2.attention.head_count"), n_embd=get("gpt2.embedding_length"),
                     vocab_size=len(fields["tokenizer.ggml.tokens"].data) - 1)


def check_first_window(model, paths: dict[str, Path], threads: int = 1) -> dict[str, tuple[float, float]]:
    """Each GGUF's logits on one first window of pseudo-text against torch's: {engine: (max |dlogit|, top-1)}.
    Refuses an f32 file that does not match (llama.cpp's GELU is tanh-approximated: ~1e-3 differences)."""
    import torch

    from picogpt.bench.engines import prompt_ids

    ids = prompt_ids(model.config.context_len, seed=2)
    with torch.no_grad():
        ref = model.forward_window(torch.tensor([ids]), model.zero_context(1))[0][0].numpy()
    out = {}
    for engine, path in paths.items():
        decoder = LlamaCppDecoder(path, threads, model.config)
        got = decoder.window_logits(ids)
        decoder.close()
        out[engine] = (float(np.abs(got - ref).max()), float((got.argmax(-1) == ref.argmax(-1)).mean()))
        if engine.endswith("f32") and out[engine][0] > F32_MAX_LOGIT_DIFF * max(1.0, float(np.abs(ref).max())):
            raise PicoError(f"{engine}: llama.cpp's logits differ from torch's by {out[engine][0]:.2e} on the first "
                            "window: the GGUF does not describe this model")
    return out


@dataclass
class LlamaState:
    pos: int = 0  # rows filled in the current window, slot included
    recent: deque = field(default_factory=deque)  # the last `overlap` characters, re-fed after a restart


class LlamaCppDecoder:
    """The decoder interface of picogpt.generation (config, new_state, feed) over llama.cpp's context."""

    def __init__(self, path: str | Path, threads: int, config: GPTConfig | None = None,
                 overlap: int | None = None) -> None:
        if available():
            raise PicoError(available())
        import llama_cpp

        self.config, self.lib = config or gguf_config(path), llama_cpp
        n = self.config.n_positions
        self.llm = llama_cpp.Llama(str(path), n_ctx=n, n_batch=n, n_ubatch=n, n_threads=threads,
                                   n_threads_batch=threads, verbose=False, logits_all=False)
        stored = self.llm.metadata.get("picogpt.overlap")
        self.overlap = resolve_overlap(int(stored) if overlap is None and stored is not None else overlap,
                                       self.config.context_len)
        self.slot = self.config.vocab_size
        self.n_vocab = self.llm.n_vocab()

    def new_state(self, batch: int = 1) -> LlamaState:
        if batch != 1:
            raise PicoError("the llama.cpp engine decodes one stream")
        self.llm._ctx.kv_cache_clear()
        return LlamaState(recent=deque(maxlen=max(self.overlap, 1)))

    def _decode(self, tokens: list[int], pos: int, all_logits: bool = False) -> np.ndarray:
        batch = self.llm._batch
        batch.set_batch(tokens, n_past=pos, logits_all=all_logits)
        self.llm._ctx.decode(batch)
        rows = len(tokens) if all_logits else 1
        ptr = self.lib.llama_get_logits(self.llm._ctx.ctx) if all_logits else \
            self.lib.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(rows * self.n_vocab,)).reshape(rows, self.n_vocab).copy()

    def feed(self, ids: np.ndarray, state: LlamaState) -> np.ndarray:
        pending, n, logits = [int(i) for i in np.asarray(ids)[0]], self.config.n_positions, None
        while pending:
            head: list[int] = []
            if state.pos in (0, n):  # a new window: the slot, then (after a full one) the last K characters
                self.llm._ctx.kv_cache_clear()
                head = [self.slot] + (list(state.recent)[-self.overlap :] if state.pos == n and self.overlap else [])
                state.pos = 0
            take = min(len(pending), n - state.pos - len(head))
            logits = self._decode(head + pending[:take], state.pos)
            state.pos += len(head) + take
            state.recent.extend(pending[:take])
            pending = pending[take:]
        return logits[:, : self.config.vocab_size]

    def window_logits(self, ids: list[int]) -> np.ndarray:
        """Logits [len(ids), V] of one first window [slot, ids] (for the check against torch)."""
        self.llm._ctx.kv_cache_clear()
        return self._decode([self.slot, *ids], 0, all_logits=True)[1:, : self.config.vocab_size]

    def close(self) -> None:
        """Free llama.cpp's context now (its destructor at interpreter exit can no longer call the library)."""
        self.llm.close()


def prepare(checkpoint: Path, engines: list[str], work: Path, log) -> tuple[dict[str, Path], list[str]]:
    """GGUFs of `checkpoint` for the llama.cpp `engines`, checked against torch on the first window; notes
    for the bench output. Without llama-cpp-python: no engines, and one note saying how to install it."""
    if available():
        return {}, [available()]
    from picogpt.checkpoint import read_checkpoint

    loaded = read_checkpoint(checkpoint)
    paths = {e: write_gguf(loaded.model, loaded.tokenizer, work / f"{e}.gguf", e.split("-", 1)[1]) for e in engines}
    checked = check_first_window(loaded.model, paths)
    log("llama.cpp vs torch, first window: " + ", ".join(
        f"{e} max|dlogit| {d:.1e} top-1 {a:.0%}" for e, (d, a) in checked.items()))
    note = (f"llama.cpp engines: the checkpoint as a GPT-2 GGUF with a zero slot row; after a full window its cache "
            f"restarts with [slot, last {resolve_overlap(None, loaded.model.config.context_len)} characters] "
            "(picogpt.overlap in the GGUF; --overlap overrides it) and the slot "
            "stays zeros (llama.cpp cannot take PicoGPT's carried context vector), so past the first window its "
            "text is not PicoGPT's; only its speed is compared. Q8_0/Q4_0 quantize the block linears; embeddings "
            "and the output matrix stay f32, as PicoGPT int8 keeps its lm_head fp32.")
    return paths, [note]
