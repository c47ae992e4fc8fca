"""The PicoGPT model: nanoGPT's transformer plus a context vector carried between windows.

Text is cut into windows of `context_len` characters, aligned from the start of the
sequence. Each window is fed as `[slot, c_1 .. c_T]`: the slot's input embedding is the
context vector, the mean of the previous window's final-LayerNorm hidden states (slot
included), or zeros for the first window. Attention is causal inside a window; windows only
talk through the slot. Position j of a window (1..T) predicts the character after c_j, so the
slot's own output is never scored and every target is counted exactly once. With an overlap K, a
window after the first re-reads the K characters before its new ones (unscored), as generation does.

Three entry points that agree (tests check it):
  * `forward_window`  one window, no cache;
  * `forward`         a whole sequence, windows chained, with the training loss;
  * `decode`          incremental, with a KV cache and a running sum of `ln_f` outputs,
                      O(1) work per new token; `generate` is built on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

from picogpt.config import LN_EPS, GPTConfig
from picogpt.generation import generate_ids
from picogpt.sampling import Sampler, SamplingConfig
from picogpt.windows import chunk_ids, keep_recent, plan_chunks, resolve_overlap, window_spans

KVCache = list[tuple[torch.Tensor, torch.Tensor]]
_cat = partial(torch.cat, dim=1)


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's cannot drop only the bias)."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, LN_EPS)


def causal_mask(q_len: int, k_len: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean mask aligned bottom-right: query i (the newest q_len of k_len) sees keys <= its own position.
    (`scaled_dot_product_attention(is_causal=True)` aligns top-left: wrong once a cache makes k_len > q_len.)"""
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    k_pos = torch.arange(k_len, device=device)[None, :]
    return k_pos <= q_pos


class Linear(nn.Linear):
    """nn.Linear (same parameters and names) computed as a matmul plus an in-place bias add: on CPU, `addmm`
    (what F.linear uses with a bias) can be much slower than `mm` followed by a broadcast add. Training may
    set `kernel`, a faster x W^T + b for its CPU (picogpt.train.matmul)."""

    kernel: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is not None:
            return self.kernel(x, self.weight, self.bias)
        y = torch.matmul(x, self.weight.t())
        return y.add_(self.bias) if self.bias is not None else y


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        drop = self.dropout if self.training else 0.0
        if past is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, k.size(2), x.device), dropout_p=drop)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y)), (k, v)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        a, present = self.attn(self.ln_1(x), past)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, present


@dataclass
class DecodeState:
    """Everything `GPT.decode` carries between calls, for a batch of streams in lockstep. `pos` counts the
    positions filled in the current window (slot included); `hidden_sum` sums their `ln_f` outputs, so the
    next window's context vector is `hidden_sum / pos` without recomputing anything."""

    context: torch.Tensor  # [B, E] this window's context vector
    hidden_sum: torch.Tensor  # [B, E]
    past: KVCache | None = None
    pos: int = 0
    recent: torch.Tensor | None = None  # [B, <= overlap] the stream's last ids, re-read by the next window


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.n_positions, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as in nanoGPT
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections keeps the residual stream's variance flat.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):  # includes our Linear
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # ---- the shared core -------------------------------------------------------------
    def run_blocks(
        self, x: torch.Tensor, start_pos: int, past: KVCache | None = None
    ) -> tuple[torch.Tensor, KVCache]:
        """Input embeddings [B,T,E] at window positions start_pos.. -> ln_f hidden states, new cache."""
        pos = torch.arange(start_pos, start_pos + x.size(1), device=x.device)
        x = self.transformer.drop(x + self.transformer.wpe(pos))
        presents: KVCache = []
        for i, block in enumerate(self.transformer.h):
            x, present = block(x, None if past is None else past[i])
            presents.append(present)
        return self.transformer.ln_f(x), presents

    def zero_context(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.config.n_embd, device=self.lm_head.weight.device)

    # ---- (a) one window ------------------------------------------------------------------
    def forward_window(self, idx: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One window: idx [B,T<=context_len], context [B,E] -> logits [B,T,V] and hidden [B,T+1,E].

        logits[:, j] predicts the character after idx[:, j]; hidden includes the slot (row 0).
        """
        if idx.size(1) > self.config.context_len:
            raise ValueError(f"window of {idx.size(1)} > context_len {self.config.context_len}")
        x = torch.cat([context[:, None, :], self.transformer.wte(idx)], dim=1)
        hidden, _ = self.run_blocks(x, 0)
        return self.lm_head(hidden[:, 1:]), hidden

    # ---- (b) a whole sequence ---------------------------------------------------------------
    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        overlap: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sequence idx [B,N] of any length, windows chained -> logits [B,N,V], mean CE loss.

        The loss averages the cross-entropy of every target exactly once (B*N terms). With `overlap`,
        each window after the first re-reads the `overlap` characters before its new ones, as generation
        does. Gradients flow through the whole chain of context vectors.
        """
        logits = torch.cat([w for w, _ in self.iter_windows(idx, context, overlap=overlap)], dim=1)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def iter_windows(self, idx: torch.Tensor, context: torch.Tensor | None = None, carry: bool = True,
                     overlap: int = 0):
        """Yield (logits of the window's new characters, hidden incl. the slot and replayed rows) per window;
        `carry=False` zeroes every context vector (ablation)."""
        ctx = self.zero_context(idx.size(0)) if context is None else context
        n = self.config.context_len
        for start, replay in window_spans(idx.size(1), n, overlap):
            logits, hidden = self.forward_window(idx[:, start - replay : start - replay + n], ctx)
            yield logits[:, replay:], hidden
            ctx = hidden.mean(dim=1) if carry else torch.zeros_like(ctx)

    # ---- (c) incremental decode ---------------------------------------------------------------
    def new_state(self, batch: int = 1, context: torch.Tensor | None = None) -> DecodeState:
        ctx = self.zero_context(batch) if context is None else context
        return DecodeState(context=ctx, hidden_sum=torch.zeros_like(ctx))

    def decode(self, idx: torch.Tensor, state: DecodeState, overlap: int = 0) -> tuple[torch.Tensor, DecodeState]:
        """Feed new ids [B,T] (T>=1) after `state`; return the logits [B,V] for the next id.

        Crosses window boundaries as needed: when a window is full, the next one starts with
        the slot whose embedding is the mean `hidden_sum / pos` of the finished window, then
        re-reads the stream's last `overlap` ids (one `overlap` for the whole stream).
        """
        last_hidden = None
        recent = idx[:, :0] if state.recent is None else state.recent
        for chunk in plan_chunks(state.pos, idx.size(1), self.config.context_len, overlap):
            if chunk.roll_over:
                ctx = state.hidden_sum / state.pos
                state = DecodeState(context=ctx, hidden_sum=torch.zeros_like(ctx))
            x = self.transformer.wte(chunk_ids(chunk, idx, recent, _cat))
            if chunk.with_slot:
                x = torch.cat([state.context[:, None, :], x], dim=1)
            hidden, past = self.run_blocks(x, chunk.pos, state.past)
            state = DecodeState(state.context, state.hidden_sum + hidden.sum(dim=1), past, chunk.pos + x.size(1))
            last_hidden = hidden[:, -1]
        if last_hidden is None:
            raise ValueError("decode needs at least one new id")
        state.recent = keep_recent(recent, idx, overlap, _cat)
        return self.lm_head(last_hidden), state

    def generate(self, prompt_ids: list[int] | list[list[int]], max_new_tokens: int,
                 sampling: SamplingConfig | None = None, seed: int | None = None, overlap: int | None = None
                 ) -> list[list[int]]:
        """Sample `max_new_tokens` ids after each prompt (one list or a batch of equal-length lists): one cached
        decode step a token, with the loop and sampler the ONNX runtime uses (picogpt.generation): the same text."""
        single = not prompt_ids or isinstance(prompt_ids[0], int)
        batch = [list(prompt_ids)] if single else [list(p) for p in prompt_ids]
        if len({len(p) for p in batch}) != 1 or not batch[0]:
            raise ValueError("prompts must be non-empty and of equal length")
        sampler = Sampler(sampling or SamplingConfig(), self.config.vocab_size, seed=seed)
        ids = np.asarray(batch, dtype=np.int64)
        steps = list(generate_ids(TorchDecoder(self, overlap), ids, max_new_tokens, sampler))
        return np.stack(steps, axis=1).tolist() if steps else [[] for _ in batch]


@dataclass
class TorchStream:
    """The decoder state of `TorchDecoder`: `GPT.decode` returns a new state, the interface updates in place."""

    state: DecodeState

    @property
    def pos(self) -> int:
        return self.state.pos


class TorchDecoder:
    """The decoder interface of picogpt.generation over `GPT.decode`: numpy ids in, numpy logits out."""

    def __init__(self, model: GPT, overlap: int | None = None) -> None:
        """`overlap`: characters a new window re-reads (default: what picogpt-export writes into a file)."""
        self.model, self.config, self.overlap = model, model.config, resolve_overlap(overlap, model.config.context_len)

    def new_state(self, batch: int = 1) -> TorchStream:
        return TorchStream(self.model.new_state(batch))

    @torch.inference_mode()
    def feed(self, ids: np.ndarray, stream: TorchStream) -> np.ndarray:
        idx = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=self.model.lm_head.weight.device)
        logits, stream.state = self.model.decode(idx, stream.state, self.overlap)
        return logits.float().cpu().numpy()
