"""Shared fixtures: a small synthetic corpus and the tiny model shape the CLI tests train."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# A tiny model: 2 layers, 32 wide, windows of 16 characters (the real config is tested where it matters).
TINY = ["--context-len", "16", "--n-layer", "2", "--n-head", "2", "--n-embd", "32"]


def _tiny_config():
    from picogpt.config import GPTConfig

    return GPTConfig(context_len=16, n_layer=2, n_head=2, n_embd=32)


TINY_CONFIG = _tiny_config()


def make_corpus(n_chars: int = 40_000, seed: int = 0) -> str:
    """Deterministic, learnable text: sentences from a small vocabulary of words."""
    import random

    rnd = random.Random(seed)
    words = ["the", "king", "queen", "speaks", "to", "his", "her", "noble", "friend", "and", "then", "goes",
             "home", "rome", "verona", "love", "night", "day", "sword", "crown"]
    out, size = [], 0
    while size < n_chars:
        line = " ".join(rnd.choice(words) for _ in range(rnd.randint(4, 9))).capitalize() + ".\n"
        out.append(line)
        size += len(line)
    return "".join(out)[:n_chars]


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(make_corpus(), encoding="utf-8")
    return path


def run_cli(module: str, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a picogpt CLI the way a user does (its own process), capturing output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          env=full_env)


def assert_one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    """Bad input: non-zero exit, no traceback, one `error:` line that says what is wrong."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert fragment.lower() in errors[0].lower(), errors[0]


def meta_of(path: Path) -> dict[str, str]:
    """The picogpt.* metadata of an .onnx file, read as the runtime reads it."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {k: v for k, v in session.get_modelmeta().custom_metadata_map.items() if k.startswith("picogpt.")}


def plain_onnx(path: Path) -> Path:
    """A valid ONNX model that is not a PicoGPT one (no picogpt.* metadata): one Identity node."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(path))
    return path


def require(why: str, ci_flag: str) -> None:
    """Skip a test whose tool is missing here, or fail it where CI set `ci_flag`=1 (it installs the tool)."""
    if os.environ.get(ci_flag) == "1":
        pytest.fail(f"cannot run: {why}")
    pytest.skip(why)


def require_web(why: str) -> None:
    """chromium / playwright / onnxruntime-web: `.ci/run` sets CI_REQUIRE_BROWSER=1."""
    require(why, "CI_REQUIRE_BROWSER")


def random_gpt(config, scale: float, seed: int = 0):
    """A GPT in eval mode with random, non-trivial weights everywhere (init leaves biases at 0)."""
    import torch

    from picogpt.model import GPT

    torch.manual_seed(seed)
    m = GPT(config).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * scale)
    return m


@pytest.fixture(scope="session")
def random_model():
    return random_gpt(TINY_CONFIG, 0.05)


def export_tiny(model, folder: Path, layout: str) -> Path:
    """`model` exported to fp32 ONNX in `layout`, with its metadata; the fingerprint is torch's greedy text,
    so `picogpt-run --verify` on the file checks it against the torch model (no other verification run)."""
    from picogpt.contract import FINGERPRINT_CHARS, FINGERPRINT_PROMPT, metadata_dict
    from picogpt.export.build import set_metadata
    from picogpt.export.graph import export_layout
    from picogpt.generation import greedy_text
    from picogpt.model import TorchDecoder
    from picogpt.tokenizer import CharTokenizer
    from picogpt.windows import resolve_overlap

    path = folder / f"tiny-{layout}.onnx"
    export_layout(model, path, layout)
    tok = CharTokenizer()
    overlap = resolve_overlap(None, model.config.context_len)  # what picogpt-export writes by default
    fingerprint = greedy_text(TorchDecoder(model, overlap), tok, FINGERPRINT_PROMPT, FINGERPRINT_CHARS)
    set_metadata(path, metadata_dict(model.config, tok, "none", 0, None, fingerprint, layout))
    return path


@pytest.fixture(scope="session")
def exported(random_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random tiny model in the default (fused) layout."""
    return export_tiny(random_model, tmp_path_factory.mktemp("onnx"), "fused")


@pytest.fixture(scope="session")
def exported_portable(random_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random tiny model through torch.onnx.export (the portable layout)."""
    return export_tiny(random_model, tmp_path_factory.mktemp("onnx"), "portable")


@pytest.fixture(params=["fused", "portable"])
def exported_any(request: pytest.FixtureRequest) -> Path:
    """Each layout in turn: the parity tests run on both."""
    return request.getfixturevalue("exported" if request.param == "fused" else "exported_portable")


def train_tiny(out: Path, corpus: Path, *extra: str) -> Path:
    """30 steps of the tiny config on `corpus` into OUT (`extra` flags override: click keeps the last)."""
    proc = run_cli("picogpt.train", "--dataset", "text", "--data", str(corpus), "--out", str(out),
                   "--max-iters", "30", "--eval-interval", "15", "--batch-size", "4", "--seq-windows", "3",
                   "--eval-iters", "1", "--lr", "3e-3", "--quiet", "--no-report", *TINY, *extra)
    assert proc.returncode == 0, proc.stderr
    return out / "ckpt.pt"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> Path:
    """One trained tiny run (OUT folder) for the whole session: tests read it, never write into it."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    train_tiny(out, corpus_file)
    return out


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_run: Path) -> Path:
    return tiny_run / "ckpt.pt"



def run_main(main, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    """A CLI run inside this process, for refusals that fire before any work (a subprocess costs seconds): the
    exit code, stdout and stderr; an exception that escapes the CLI shows as a traceback, as a user would see it."""
    import traceback

    from click.testing import CliRunner

    result = CliRunner().invoke(main, list(args), input=input, catch_exceptions=True)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "Traceback (most recent call last):\n" + "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, stderr)


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Ctrl-C, as a user stops a command; SIGKILL when it is not honoured, so a test never hangs on it."""
    import signal

    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


CHROMIUM = os.environ.get("PICOGPT_CHROMIUM", "/usr/bin/chromium")
ORT_DIR = Path(os.environ.get("PICOGPT_ORT_DIR", Path(__file__).resolve().parents[1] / ".web-deps"))


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not Path(CHROMIUM).is_file():
        require_web(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    if not (ORT_DIR / "node_modules" / "onnxruntime-web").is_dir():
        require_web(f"no onnxruntime-web in {ORT_DIR} (npm install onnxruntime-web@{ort_web_version()} --prefix ...)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require_web("no playwright (pip install -e '.[dev]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()




def ort_web_version() -> str:
    from picogpt.runtime.web import ORT_WEB_VERSION

    return ORT_WEB_VERSION
