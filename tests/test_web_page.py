"""`picogpt-web`'s page in headless Chromium (Playwright): greedy parity with picogpt-run, windows, Stop,
settings, the screenshot, cross-origin ORT, the sampler's rules.

The browser tests need Debian's chromium, the `playwright` package and an npm install of onnxruntime-web
(`.ci/run` installs all three). They skip when one is missing, unless CI_REQUIRE_BROWSER=1: then they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import CHROMIUM, ORT_DIR, meta_of, run_cli
from picogpt.export.build import set_metadata
from picogpt.export.quantize import quantize
from picogpt.runtime import Generator, bundled_model_path
from picogpt.runtime.web import ORT_MODULE, ORT_WASM, start_server
from picogpt.sampling import SamplingConfig

REPO = Path(__file__).resolve().parents[1]
GREEDY_CHARS = 400  # 7 prompt characters + 400 cross 3 windows of 128


def serve_folder(folder: Path, servers: list) -> str:
    server = start_server(folder)  # picogpt-web --serve's server: readable cross-origin, as a CDN
    threading.Thread(target=server.serve_forever, daemon=True).start()
    servers.append(server)
    return f"http://127.0.0.1:{server.server_address[1]}/"


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """serve(model, *args) -> the URL of a page for `model` (default: written with --ort-dir), served from a thread."""
    servers: list = []

    def start(model: Path, *args: str) -> str:
        out = tmp_path_factory.mktemp("web") / "site"
        proc = run_cli("picogpt.runtime.web", str(model), "-o", str(out), *(args or ("--ort-dir", str(ORT_DIR))))
        assert proc.returncode == 0, proc.stderr
        start.last = out  # type: ignore[attr-defined]
        return serve_folder(out, servers)

    start.folder = lambda folder: serve_folder(folder, servers)  # type: ignore[attr-defined]
    yield start
    for s in servers:
        s.shutdown()


def open_page(browser, url: str):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.evaluate("window.picogpt.ready.then(() => true)")
    assert not errors, errors
    return page


GREEDY_JS = """async ([prompt, n]) => {
  const text = await picogpt.generate(prompt, {temperature: 0, maxNewTokens: n});
  const m = await picogpt.ready;
  return {text, stats: m.stats, fingerprint: m.fingerprint, now: performance.now()};
}"""


def python_text(model: Path | None, prompt: str, n: int, **sampling) -> str:
    """What picogpt-run prints after the prompt, for these sampling settings (temperature 0 = greedy)."""
    return Generator(model).generate(prompt, n, sampling=SamplingConfig(**{"temperature": 0.0, **sampling}))


def test_page_greedy_equals_picogpt_run_on_the_bundled_model(browser, serve) -> None:
    """Whatever form the bundled file has (int8 runs natively fastest), the page's own file computes in fp32
    and its greedy text is `picogpt-run -m SITE/<that file>`'s, fingerprint included."""
    page = open_page(browser, serve(bundled_model_path()))
    site_file = serve.last / bundled_model_path().name
    meta = meta_of(site_file)
    fp = json.loads(meta["picogpt.fingerprint"])
    assert len(fp["prompt"]) + GREEDY_CHARS > 3 * json.loads(meta["picogpt.config"])["context_len"]  # 3 roll-overs
    assert meta["picogpt.quantization"] == "int8-weights"  # int8 storage, fp32 arithmetic (runtime/webquant.py)
    assert int(meta["picogpt.overlap"]) > 0  # each new window re-reads the end of the last one, in both
    got = page.evaluate(GREEDY_JS, [fp["prompt"], GREEDY_CHARS])
    print(f"\nbundled: stats {got['stats']}; page load to last token {got['now']:.0f} ms")
    assert got["text"].startswith(fp["greedy"])  # the page file's fingerprint
    assert got["text"] == python_text(site_file, fp["prompt"], GREEDY_CHARS)
    page.close()


@pytest.mark.parametrize("layout", ["fused", "portable", "fused-int8"])
def test_page_greedy_equals_picogpt_run_on_a_fresh_export(browser, serve, layout: str, exported: Path,
                                                           exported_portable: Path, tmp_path: Path) -> None:
    model = exported if layout == "fused" else exported_portable
    if layout == "fused-int8":  # integer arithmetic natively: the page gets the same codes computed in fp32
        model = tmp_path / "tiny-int8.onnx"
        quantize(exported, model, "int8")
        set_metadata(model, {**meta_of(exported), "picogpt.quantization": "int8"})
    page = open_page(browser, serve(model))
    got = page.evaluate(GREEDY_JS, ["ROMEO:\n", GREEDY_CHARS])["text"]
    assert got == python_text(serve.last / model.name, "ROMEO:\n", GREEDY_CHARS)  # 25 windows of 16
    page.close()


def test_page_settings_stop_warnings_and_screenshot(browser, serve, tmp_path: Path) -> None:
    page = open_page(browser, serve(bundled_model_path()))
    site_file = serve.last / bundled_model_path().name
    page.fill("#temperature", "hot")  # nonsense settings: an inline message, nothing runs
    page.click("#go")
    assert "temperature must be a number" in page.text_content("#error")
    for js, fragment in [("picogpt.generate('a', {topP: 2})", "topP must be in (0, 1]"),
                         ("picogpt.generate('a', {maxNewTokens: -1})", "maxNewTokens"),
                         ("picogpt.generate('a', {topK: 1000})", "topK")]:
        assert fragment in page.evaluate(f"{js}.then(() => 'no error', (e) => e.message)")
    page.fill("#temperature", "0.8")
    page.fill("#seed", "1")
    page.fill("#maxNewTokens", "600")
    page.click("#go")  # a finished sample, for the screenshot (README: docs/web.png)
    page.wait_for_function("document.getElementById('go').textContent === 'Generate'", timeout=30000)
    shot = tmp_path / "web.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("PICOGPT_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["PICOGPT_SCREENSHOT"])
    page.fill("#seed", "")
    page.fill("#maxNewTokens", "100000")
    page.fill("#prompt", "ROMEO: ☃ ☃")  # two characters outside the vocabulary: one warning
    page.click("#go")
    page.wait_for_function("document.getElementById('out').textContent.length > 300")
    assert page.text_content("#go") == "Stop" and "2 prompt character(s)" in page.text_content("#warning")
    page.click("#go")
    page.wait_for_function("document.getElementById('go').textContent === 'Generate'", timeout=5000)
    tokens = page.evaluate("picogpt.ready.then((m) => m.stats.tokens)")
    assert 0 < tokens < 100000
    page.wait_for_timeout(300)
    assert page.evaluate("picogpt.ready.then((m) => m.stats.tokens)") == tokens  # stopped means stopped
    assert "tokens/s" in page.text_content("#status") and page.text_content("#error") == ""
    empty, newline = page.evaluate("""async () => [
      await picogpt.generate('', {temperature: 0, maxNewTokens: 50}),
      await picogpt.generate('\\n', {temperature: 0, maxNewTokens: 50})]""")
    assert empty == newline and empty[:10] == python_text(site_file, "", 10)  # an empty prompt is "\n", as picogpt-run
    page.close()


def test_page_loads_ort_from_a_url_and_refuses_a_changed_file(browser, serve, exported: Path, tmp_path: Path) -> None:
    """--ort-url (the CDN mode): ORT comes from another origin, checked against the npm package's hashes."""
    dist = ORT_DIR / "node_modules" / "onnxruntime-web" / "dist"
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in (ORT_MODULE, ORT_WASM):
        shutil.copyfile(dist / name, mirror / name)
    page = open_page(browser, serve(exported, "--ort-url", serve.folder(mirror)))
    assert page.evaluate(GREEDY_JS, ["abc", 20])["text"] == python_text(exported, "abc", 20)
    page.close()
    with (mirror / ORT_MODULE).open("a") as f:
        f.write("// changed\n")
    page = browser.new_page()
    page.goto(serve(exported, "--ort-url", serve.folder(mirror)))
    page.wait_for_function("document.getElementById('error').textContent !== ''")
    assert "could not be loaded" in page.text_content("#error") and page.text_content("#go") == "Unavailable"
    page.close()


def test_page_sampler_follows_picogpt_sampling(browser, serve, exported: Path) -> None:
    """The JS sampler's rules are picogpt/sampling.py's: what needs no random numbers matches exactly."""
    page = open_page(browser, serve(exported))
    run = "([p, o]) => picogpt.generate(p, o)"
    penalised = page.evaluate(run, ["the king", {"temperature": 0, "repetitionPenalty": 1.3, "maxNewTokens": 200}])
    assert penalised == python_text(exported, "the king", 200, repetition_penalty=1.3)
    greedy = python_text(exported, "the king", 100)
    for opts in ({"topK": 1}, {"topP": 1e-9}):  # one candidate left: sampling is greedy
        assert page.evaluate(run, ["the king", {"temperature": 1.5, "maxNewTokens": 100, **opts}]) == greedy
    seeded = {"temperature": 1.0, "topK": 20, "topP": 0.9, "seed": 7, "maxNewTokens": 100}
    first = page.evaluate(run, ["the king", seeded])
    assert first == page.evaluate(run, ["the king", seeded]) and first != greedy  # a seed repeats its text
    page.close()


def test_web_speed_bench_times_the_page_and_checks_parity(browser, exported: Path, tmp_path: Path) -> None:
    """`python -m picogpt.bench.web_speed SITE --parity MODEL`, as the README runs it (a short version)."""
    site = tmp_path / "site"
    assert run_cli("picogpt.runtime.web", str(exported), "-o", str(site), "--ort-dir", str(ORT_DIR)).returncode == 0
    proc = run_cli("picogpt.bench.web_speed", str(site), "--runs", "1", "--tokens", "50", "--chromium", CHROMIUM,
                   "--parity", str(exported), "--parity-chars", "150")
    assert proc.returncode == 0, proc.stderr
    assert "run 0: ready" in proc.stdout and "tokens/s" in proc.stdout
    assert "parity: 150-150 of 150 characters equal (8 of 8 prompts all the way)" in proc.stdout, proc.stdout
