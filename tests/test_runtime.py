"""`picogpt.runtime`: torch-free generation that reproduces the torch reference, and its CLI."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_CONFIG, assert_one_line_error, plain_onnx, run_cli
from picogpt.errors import PicoError
from picogpt.runtime import Generator, bundled_model_path
from picogpt.sampling import SamplingConfig
from picogpt.tokenizer import CharTokenizer
from picogpt.windows import plan_chunks

TOK = CharTokenizer()
SETTINGS = [dict(temperature=0.0), dict(temperature=1.0, top_k=20), dict(temperature=0.9, top_p=0.9,
                                                                          repetition_penalty=1.2)]


def test_core_data_and_runtime_import_no_torch() -> None:
    core = ["config", "tokenizer", "sampling", "windows", "contract", "generation", "errors", "system"]
    modules = [f"picogpt.{m}" for m in core] + ["picogpt.data", "picogpt.runtime", "picogpt.runtime.cli"]
    code = (f"import sys, {', '.join(modules)}\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("setting", SETTINGS, ids=["greedy", "top_k", "top_p_penalty"])
def test_same_text_as_torch_generate(random_model, exported: Path, seed: int, setting: dict) -> None:
    prompt = "to be, or not"
    n = 3 * TINY_CONFIG.context_len + 7  # crosses several windows
    ref = random_model.generate(TOK.encode(prompt), n, SamplingConfig(**setting), seed=seed)[0]
    got = Generator(exported).generate(prompt, n, sampling=SamplingConfig(**setting), seed=seed)
    assert got == TOK.decode(ref)


def test_stream_equals_generate_and_goes_far(exported: Path) -> None:
    g = Generator(exported)
    pieces = list(g.stream("abc", max_new_tokens=400, seed=3))
    assert "".join(pieces) == g.generate("abc", max_new_tokens=400, seed=3)
    assert g.stats.tokens == 400  # padding ids decode to "", so the text may be shorter than the ids
    stream = g.new_stream(SamplingConfig(temperature=1.0), seed=1)
    list(g.stream("abc", 2000, stream=stream))
    assert g.stats.tokens == 2000
    assert stream.state.pos <= TINY_CONFIG.n_positions  # 2,000 tokens later the cache is still one window


def test_a_request_is_checked_before_any_piece_is_asked_for(exported: Path) -> None:
    g = Generator(exported)
    for kwargs, fragment in [({"max_new_tokens": -1}, "--max-new-tokens"), ({"num_samples": 0}, "--num-samples"),
                             ({"seed": -2}, "--seed"), ({"sampling": SamplingConfig(top_p=2.0)}, "--top-p")]:
        with pytest.raises(PicoError, match=fragment):
            g.stream("abc", **kwargs)  # not iterated: the call itself refuses
    stream = g.new_stream(seed=0)
    with pytest.raises(PicoError, match="keeps its own sampling"):
        g.stream("abc", 5, seed=1, stream=stream)


def test_batch_of_samples_and_stop_strings(exported: Path) -> None:
    g = Generator(exported)
    samples = g.generate("abc", max_new_tokens=50, seed=4, num_samples=3)
    assert len(samples) == 3 and len(set(samples)) > 1
    greedy = SamplingConfig(temperature=0)
    full = g.generate("abc", max_new_tokens=80, sampling=greedy)
    stop = full[20:23]
    cut = g.generate("abc", max_new_tokens=80, sampling=greedy, stop=[stop])
    assert cut == full[: full.index(stop)]


def test_cli_streams_with_prompt_stdin_and_stats(exported: Path) -> None:
    proc = run_cli("picogpt.runtime", "-m", str(exported), "--prompt", "Hello", "--max-new-tokens", "40",
                   "--seed", "1", "--stats")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Hello") and len(proc.stdout) > 40
    assert "ms/token" in proc.stderr and "tokens/s" in proc.stderr and "prefill 5 chars in" in proc.stderr
    piped = subprocess.run([sys.executable, "-m", "picogpt.runtime", "-m", str(exported), "--max-new-tokens", "40",
                            "--seed", "1"], input="Hello", capture_output=True, text=True)
    assert piped.stdout == proc.stdout


def test_cli_verify_chat_interactive_and_unknown_chars(exported: Path) -> None:
    ok = run_cli("picogpt.runtime", "-m", str(exported), "--verify")
    assert ok.returncode == 0 and "fingerprint OK" in ok.stdout, ok.stderr
    chat = run_cli("picogpt.runtime", "-m", str(exported), "--chat", "--prompt", "who are you?",
                   "--max-new-tokens", "30", "--seed", "0")
    assert chat.returncode == 0 and "</A>" not in chat.stdout
    warn = run_cli("picogpt.runtime", "-m", str(exported), "--prompt", "héllo 😀", "--max-new-tokens", "5")
    assert warn.returncode == 0 and warn.stderr.count("not in the vocabulary") == 1
    repl = subprocess.run([sys.executable, "-m", "picogpt.runtime", "-m", str(exported), "--interactive",
                           "--max-new-tokens", "10", "--seed", "0"], input="one\ntwo\n", capture_output=True,
                          text=True, timeout=60)
    assert repl.returncode == 0, repl.stderr
    # one stream: the second line continues the stream, the context vector and the sampler's draws
    g, sampling = Generator(exported), SamplingConfig()
    stream = g.new_stream(sampling, seed=0)
    first, second = ("".join(g.stream(line, 10, stream=stream)) for line in ("one\n", "two\n"))
    assert repl.stdout == f"{first}\n{second}\n"
    assert second != "".join(g.stream("two\n", 10, stream=g.new_stream(sampling, seed=0)))


def test_empty_prompt_starts_a_line(exported: Path) -> None:
    g = Generator(exported)
    greedy = SamplingConfig(temperature=0)
    assert g.generate("", max_new_tokens=30, sampling=greedy) == g.generate("\n", max_new_tokens=30, sampling=greedy)
    proc = run_cli("picogpt.runtime", "-m", str(exported), "--prompt", "", "--max-new-tokens", "10")
    assert proc.returncode == 0


def test_cli_bad_inputs(exported: Path, tmp_path: Path) -> None:
    not_onnx = tmp_path / "x.onnx"
    not_onnx.write_text("hello")
    import onnx

    plain = plain_onnx(tmp_path / "plain.onnx")
    future = tmp_path / "future.onnx"
    m = onnx.load(str(exported))
    for p in m.metadata_props:
        if p.key == "picogpt.format_version":
            p.value = "99"
    onnx.save(m, str(future))
    m = str(exported)
    cases = [
        (["-m", str(tmp_path / "missing.onnx")], "not found"),
        (["-m", str(not_onnx)], "not a valid onnx"),
        (["-m", str(plain)], "not a picogpt one"),
        (["-m", str(future)], "format version 99"),
        (["-m", m, "--temperature", "-1"], "--temperature"),
        (["-m", m, "--top-k", "0"], "--top-k"),
        (["-m", m, "--top-k", "89"], "--top-k"),
        (["-m", m, "--top-p", "0"], "--top-p"),
        (["-m", m, "--top-p", "1.5"], "--top-p"),
        (["-m", m, "--max-new-tokens", "-5"], "--max-new-tokens"),
        (["-m", m, "--threads", "0"], "--threads"),
    ]
    for args, fragment in cases:
        assert_one_line_error(run_cli("picogpt.runtime", *args, "--prompt", "x"), fragment)


def test_ctrl_c_mid_stream_keeps_output(exported: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "picogpt.runtime", "-m", str(exported), "--prompt", "go",
                             "--max-new-tokens", "10000000", "--seed", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stdout.read(50)  # it is streaming
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "Traceback" not in err and "interrupted" in err
    assert first.startswith("go") and len(first + rest) > 50


def test_bundled_model_runs_without_arguments() -> None:
    path = bundled_model_path()
    assert path.is_file() and path.stat().st_size <= 8_000_000
    g = Generator()
    assert g.metadata["quantization"].startswith("int8")
    assert g.config.num_params() == 6_341_120
    text = g.generate("ROMEO:", max_new_tokens=200, seed=0)
    assert len(text) == 200
    ok, expected, got = g.verify()
    assert ok, (expected, got)
    proc = run_cli("picogpt.runtime", "--prompt", "ROMEO:", "--max-new-tokens", "50", "--seed", "0")
    assert proc.returncode == 0 and proc.stdout.startswith("ROMEO:")


def test_the_fused_cache_is_written_in_place_and_stays_one_window(exported: Path) -> None:
    import numpy as np

    dec = Generator(exported).decoder
    assert dec.layout == "fused"
    state = dec.new_state(1)
    dec.feed(np.array([TOK.encode("hello")]), state)
    for buf in state.cache.buffers:  # onnxruntime wrote the slot and 5 rows into our own arrays, nothing else
        assert np.abs(buf[:, :, :6]).sum(-1).all() and not buf[:, :, 6:].any()
    positions = []
    for _ in range(3 * TINY_CONFIG.n_positions):
        dec.feed(np.array([[TOK.encode("a")[0]]]), state)
        positions.append(state.pos)
    # a new window after each full one: the slot, the re-read overlap and the new character
    rolls = sum(c.roll_over for c in plan_chunks(6, 3 * TINY_CONFIG.n_positions, TINY_CONFIG.context_len, dec.overlap))
    assert max(positions) == TINY_CONFIG.n_positions and positions.count(2 + dec.overlap) == rolls >= 3


def test_version_1_files_still_run(exported_portable: Path, tmp_path: Path) -> None:
    """Files written before the fused layout (format 1, no `layout` key) are read as portable."""
    import onnx

    m = onnx.load(str(exported_portable))
    props = [(p.key, p.value) for p in m.metadata_props if p.key != "picogpt.layout"]
    del m.metadata_props[:]
    for k, v in props:
        m.metadata_props.add(key=k, value="1" if k == "picogpt.format_version" else v)
    old = tmp_path / "v1.onnx"
    onnx.save(m, str(old))
    new = Generator(exported_portable).generate("ab", max_new_tokens=40, seed=1)
    g = Generator(old)
    assert g.decoder.layout == "portable" and g.generate("ab", max_new_tokens=40, seed=1) == new
