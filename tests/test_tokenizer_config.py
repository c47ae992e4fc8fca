"""Tokenizer id table, config and the torch-free promise of the base package."""

from __future__ import annotations

import string
import subprocess
import sys

import pytest

from picogpt.config import GPTConfig
from picogpt.errors import PicoError
from picogpt.tokenizer import CharTokenizer


def test_seed_id_table() -> None:
    tok = CharTokenizer()
    assert tok.vocab_size == 88
    assert tok.encode("0") == [1] and tok.encode("9") == [10]
    assert tok.encode("a") == [11] and tok.encode("z") == [36]
    assert tok.encode(string.punctuation) == list(range(37, 69))
    assert tok.encode(" \t\n\r\x0b\x0c") == list(range(69, 75))
    assert tok.encode("<P><S></S><Q></Q><A></A>") == list(range(75, 82))
    assert tok.vocab[82:] == [""] * 6


def test_lowercase_and_unknown_counted() -> None:
    tok = CharTokenizer()
    enc = tok.encode_counted("ROMEO é😀!")
    assert enc.ids[:5] == tok.encode("romeo")
    assert enc.ids[6:8] == [0, 0]
    assert enc.unknown == 2
    assert tok.decode(tok.encode("Hello, World!\n")) == "hello, world!\n"


def test_special_tokens_only_when_allowed() -> None:
    tok = CharTokenizer()
    assert tok.encode("<Q>hi</Q>") == [78, 18, 19, 79]
    assert tok.encode("<Q>", allow_special=False) == tok.encode("<") + tok.encode("q") + tok.encode(">")


def test_tokenizer_json_roundtrip_and_errors() -> None:
    tok = CharTokenizer()
    assert CharTokenizer.from_json(tok.to_json()) == tok
    with pytest.raises(PicoError):
        CharTokenizer.from_json("{not json")
    with pytest.raises(PicoError):
        CharTokenizer.from_json('{"format": "other", "vocab": []}')
    with pytest.raises(PicoError):
        tok.decode([88])


def test_config_defaults_and_param_count() -> None:
    cfg = GPTConfig()
    assert (cfg.context_len, cfg.vocab_size, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.dropout, cfg.bias) == (
        128, 88, 8, 8, 256, 0.0, True)
    assert cfg.num_params() == 6_341_120
    assert cfg.num_params(include_positions=True) == 6_341_120 + 129 * 256
    assert GPTConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(PicoError):
        GPTConfig(n_embd=250, n_head=8)
    with pytest.raises(PicoError):
        GPTConfig.from_dict({"n_embd": 256, "bogus": 1})


def test_base_package_does_not_import_torch() -> None:
    code = (
        "import sys, picogpt, picogpt.tokenizer, picogpt.config, picogpt.sampling, picogpt.system\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
