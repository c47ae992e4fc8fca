"""`picogpt-web` without a browser: the folder it writes, the web variant of the graph, ORT's files and
hashes, bad input, and `--serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import assert_one_line_error, meta_of, plain_onnx, require_web, run_cli, stop_process
from picogpt.runtime import Generator, bundled_model_path
from picogpt.runtime.web import ORT_INTEGRITY, ORT_MODULE, ORT_WASM, ORT_WEB_VERSION, integrity
from picogpt.runtime.webgraph import web_variant

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("PICOGPT_CHROMIUM", "/usr/bin/chromium")
ORT_DIR = Path(os.environ.get("PICOGPT_ORT_DIR", REPO / ".web-deps"))


def test_web_module_imports_no_torch() -> None:
    code = "import sys, picogpt.runtime.web\nassert 'torch' not in sys.modules\nprint('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_writes_the_folder_with_sidecar(tmp_path: Path) -> None:
    out = tmp_path / "site"
    proc = run_cli("picogpt.runtime.web", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    names = {p.name for p in out.iterdir()}
    assert names == {"index.html", "picogpt.js", "model.json", bundled_model_path().name}
    side = json.loads((out / "model.json").read_text())
    page_meta, bundled = meta_of(out / bundled_model_path().name), meta_of(bundled_model_path())
    assert side["metadata"] == page_meta and side["model"] == bundled_model_path().name
    assert page_meta["picogpt.quantization"] == "int8-weights"  # the page computes in fp32 (runtime/webquant.py)
    assert all(page_meta[k] == bundled[k] for k in bundled if k not in ("picogpt.quantization", "picogpt.fingerprint"))
    html = (out / "index.html").read_text()
    assert f"onnxruntime-web@{ORT_WEB_VERSION}" in html and ORT_INTEGRITY[ORT_MODULE] in html
    assert ORT_INTEGRITY[ORT_WASM] in html and "__" not in html.replace("__TITLE", "")
    assert sum(p.stat().st_size for p in out.iterdir()) <= 15e6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no work folder left beside it
    again = run_cli("picogpt.runtime.web", "-o", str(out))  # a page written earlier is replaced
    assert again.returncode == 0, again.stderr


def test_web_variant_computes_what_the_fused_graph_does(exported: Path) -> None:
    """The new-rows outputs are the rows the fused graph writes into its cache, the rest is unchanged."""
    import onnxruntime as ort

    c = Generator(exported).config
    native = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    web = ort.InferenceSession(web_variant(exported.read_bytes(), c.n_layer, c.n_head, c.head_size),
                               providers=["CPUExecutionProvider"])
    shape = (1, c.n_head, c.n_positions, c.head_size)
    rng = np.random.default_rng(0)
    pos, new = 5, 3
    feeds = {"input_ids": np.array([[3, 4, 5]]), "position_ids": np.arange(pos, pos + new)[None],
             "context": rng.standard_normal((1, c.n_embd)).astype(np.float32),
             "seqlens_k": np.array([pos + new - 1], np.int32), "total_sequence_length": np.array(pos + new, np.int32)}
    for i in range(c.n_layer):
        feeds[f"past_key_{i}"] = rng.standard_normal(shape).astype(np.float32)
        feeds[f"past_value_{i}"] = rng.standard_normal(shape).astype(np.float32)
    want = dict(zip([o.name for o in native.get_outputs()], native.run(None, feeds)))
    got = dict(zip([o.name for o in web.get_outputs()],
                   web.run(None, {**feeds, "web_row_start": np.array([pos]), "web_row_end": np.array([pos + new])})))
    np.testing.assert_array_equal(got["logits"], want["logits"])
    np.testing.assert_array_equal(got["hidden_sum"], want["hidden_sum"])
    rows = np.concatenate([want[f"present_{kind}_{i}"][:, :, pos : pos + new] for i in range(c.n_layer)
                           for kind in ("key", "value")])
    np.testing.assert_array_equal(got["new_rows"], rows)  # [2 * n_layer, H, new, D]


def fake_ort_package(root: Path, version: str) -> Path:
    dist = root / "node_modules" / "onnxruntime-web" / "dist"
    dist.mkdir(parents=True)
    (dist.parent / "package.json").write_text(json.dumps({"name": "onnxruntime-web", "version": version}))
    (dist / ORT_MODULE).write_text("export const fake = 1;\n")
    (dist / ORT_WASM).write_bytes(b"\0asm" + bytes(1000))
    return root


def test_ort_dir_copies_ort_into_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "site"
    npm = fake_ort_package(tmp_path / "npm", ORT_WEB_VERSION)
    proc = run_cli("picogpt.runtime.web", "-o", str(out), "--ort-dir", str(npm))
    assert proc.returncode == 0, proc.stderr
    html = (out / "index.html").read_text()
    module = (out / "ort" / ORT_MODULE).read_bytes()
    assert "./ort/" + ORT_MODULE in html and integrity(module) in html and "cdn.jsdelivr" not in html
    assert integrity((out / "ort" / (ORT_WASM + ".gzip")).read_bytes()) in html


def test_bad_input_is_one_line_and_writes_nothing(exported: Path, tmp_path: Path) -> None:

    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    plain = plain_onnx(tmp_path / "plain.onnx")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    out = str(tmp_path / "site")
    cases = [([str(tmp_path / "missing.onnx"), "-o", out], "not found"),
             ([str(text), "-o", out], "not a valid ONNX"),
             ([str(plain), "-o", out], "not a PicoGPT"),
             ([str(exported), "-o", str(a_file / "site")], "does not exist"),
             ([str(exported), "-o", str(a_file)], "is a file"),
             ([str(exported), "-o", str(tmp_path)], "did not write"),
             ([str(exported), "-o", out, "--ort-dir", str(tmp_path)], "no onnxruntime-web"),
             ([str(exported), "-o", out, "--ort-url", "ftp://example.org/ort/"], "not an http(s)"),
             ([str(exported), "-o", out, "--ort-url", "https://example.org/", "--ort-dir", str(tmp_path)], "exclude"),
             ([str(exported), "-o", out, "--ort-dir", str(fake_ort_package(tmp_path / "old", "1.17.0"))], "1.17.0")]
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, fragment in cases:
        assert_one_line_error(run_cli("picogpt.runtime.web", *args), fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no folder, not even a half-written one


def test_integrity_hashes_are_the_npm_packages() -> None:
    dist = ORT_DIR / "node_modules" / "onnxruntime-web" / "dist"
    if not dist.is_dir():
        require_web(f"no npm onnxruntime-web in {ORT_DIR}")
    for name, want in ORT_INTEGRITY.items():
        assert integrity((dist / name).read_bytes()) == want, name


def test_serve_previews_the_folder_on_localhost(tmp_path: Path) -> None:
    import urllib.request

    out = tmp_path / "site"
    proc = subprocess.Popen([sys.executable, "-m", "picogpt.runtime.web", "-o", str(out), "--serve", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline(), proc.stdout.readline()]  # "wrote ...", "serving ... at URL"
        url = lines[1].split(" at ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:"), lines
        with urllib.request.urlopen(url + "model.json", timeout=10) as r:
            assert json.load(r)["model"] == bundled_model_path().name
        with urllib.request.urlopen(url + "picogpt.js", timeout=10) as r:
            assert r.headers["Content-Type"].startswith("text/javascript")
    finally:
        stop_process(proc)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr.read()
