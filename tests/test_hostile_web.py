"""The page writer with hostile names and URLs (escaped for every context, never overwriting its own files), its
work folders after a kill, and long-running commands that stop on Ctrl-C even when started with SIGINT ignored
(a background job, nohup)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_web_page import serve_folder

from conftest import ORT_DIR, assert_one_line_error, run_main, stop_process
from picogpt.runtime.web import main as web_main

REPO = Path(__file__).resolve().parents[1]
HOSTILE_NAMES = ['w<img src=x onerror="window.pwned=1">.onnx', "a'b\"c<script>window.pwned=2<!--.onnx",
                 "run#1.onnx", "x?y=1&z=<b>.onnx", "  spaced name .onnx", "%2e%2e.onnx", "index.html", "picogpt.js",
                 "model.json", "ort", "..onnx"]


def copy_as(exported: Path, folder: Path, name: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_bytes(exported.read_bytes())
    return path


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_model_name_is_escaped_and_never_replaces_a_page_file(name: str, exported: Path,
                                                                        tmp_path: Path) -> None:
    from importlib import resources

    model = copy_as(exported, tmp_path / "in", name)
    site = tmp_path / "site"
    proc = run_main(web_main, str(model), "-o", str(site))
    assert proc.returncode == 0, proc.stderr
    html = (site / "index.html").read_text()
    assert "<img" not in html and "<script>window.pwned" not in html  # the name is text, not markup
    side = json.loads((site / "model.json").read_text())
    stored = side["model"]
    assert stored.endswith(".onnx") and stored not in ("index.html", "picogpt.js", "model.json")
    assert all(c.isalnum() or c in "._-" for c in stored) and not stored.startswith(".")  # fetched as it is named
    assert (site / stored).is_file()
    packaged = resources.files("picogpt.runtime") / "webpage" / "picogpt.js"
    assert (site / "picogpt.js").read_text() == packaged.read_text()  # the page's own files are intact


@pytest.mark.parametrize("url", ['https://example.org/"</script><script>alert(1)</script>/',
                                 "https://example.org/ort/' onload='alert(1)", "https://exa mple.org/",
                                 "https://example.org/<x>/", "https:///no-host/", "javascript:alert(1)//https://",
                                 "https://example.org/\\..\\", "https://example.org/`x`/"])
def test_a_hostile_ort_url_is_refused(url: str, exported: Path, tmp_path: Path) -> None:
    assert_one_line_error(run_main(web_main, str(exported), "-o", str(tmp_path / "site"), "--ort-url", url),
                          "--ort-url")
    assert not (tmp_path / "site").exists()


def test_a_url_with_a_query_is_kept_inside_its_script(exported: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    url = "https://example.org/ort/?v=1&x=2/"
    assert run_main(web_main, str(exported), "-o", str(site), "--ort-url", url).returncode == 0
    html = (site / "index.html").read_text()
    assert "&x=2" not in html and "\\u0026x=2" in html  # escaped inside JSON: the same string to the browser


def test_a_model_with_external_data_is_refused(exported: Path, tmp_path: Path) -> None:
    import onnx

    model = onnx.load(str(exported))
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data",
                    size_threshold=0)
    assert_one_line_error(run_main(web_main, str(path), "-o", str(tmp_path / "site")), "separate data file")
    assert not (tmp_path / "site").exists()


@pytest.mark.parametrize("target", [".", ".."])
def test_dot_as_the_folder_is_one_line_or_a_page(target: str, exported: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (tmp_path / "a" / "keep.txt").write_text("the user's")
    monkeypatch.chdir(work)
    proc = run_main(web_main, str(exported), "-o", target)
    if target == ".":  # an empty current folder becomes the page
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "a" / "b" / "index.html").is_file()
    else:  # a folder with other files is refused
        assert_one_line_error(proc, "did not write")
        assert (tmp_path / "a" / "keep.txt").read_text() == "the user's"


def test_a_page_inside_the_folder_it_replaces_is_refused(exported: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    assert run_main(web_main, str(exported), "-o", str(site)).returncode == 0
    inside = site / json.loads((site / "model.json").read_text())["model"]
    assert_one_line_error(run_main(web_main, str(inside), "-o", str(site)), "holds the model")
    assert inside.is_file()


def test_work_folders_of_a_killed_page_writer_are_removed(exported: Path, tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [tmp_path / f".site.picogpt-web-{dead.pid}-abc", tmp_path / f".site.old-{dead.pid}-"]
    live = tmp_path / f".site.picogpt-web-{os.getpid()}-xyz"  # a running writer's folder is left alone
    for d in [*stale, live]:
        d.mkdir()
        (d / "model.json").write_text("{}")
    assert run_main(web_main, str(exported), "-o", str(tmp_path / "site")).returncode == 0
    assert not any(d.exists() for d in stale) and live.exists()


# ---- the page in Chromium: nothing hostile runs ------------------------------------------------------------


def test_no_script_runs_from_a_hostile_model_name_in_chromium(browser, exported: Path, tmp_path: Path) -> None:
    name = HOSTILE_NAMES[0].replace(".onnx", "") + HOSTILE_NAMES[1]
    model = copy_as(exported, tmp_path / "in", name)
    site = tmp_path / "site"
    proc = run_main(web_main, str(model), "-o", str(site), "--ort-dir", str(ORT_DIR))
    assert proc.returncode == 0, proc.stderr
    servers: list = []
    url = serve_folder(site, servers)
    try:
        page = browser.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(url)
        page.evaluate("window.picogpt.ready.then(() => true)")
        text = page.evaluate("picogpt.generate('ROMEO:', {temperature: 0, maxNewTokens: 20})")
        assert page.evaluate("window.pwned") is None and not dialogs
        assert page.title() == f"PicoGPT: {model.stem}"  # shown as text, exactly
        assert page.text_content("h1") == f"PicoGPT: {model.stem}" and len(text) > 0
        page.close()
    finally:
        for s in servers:
            s.shutdown()


# ---- long-running commands stop on Ctrl-C wherever they were started ------------------------------------------


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what a shell does to a background job (and nohup inherits)


@pytest.mark.parametrize("args, ready", [
    (["picogpt.runtime.web", "-o", "{tmp}/site", "--serve", "--port", "0"], "serving"),
    (["picogpt.runtime", "-m", "{exported}", "--prompt", "a", "--max-new-tokens", "100000000"], "a"),
    (["picogpt.runtime", "-m", "{exported}", "--prompt", "a", "--num-samples", "2", "--max-new-tokens",
      "100000000"], None),
])
def test_a_command_started_with_sigint_ignored_still_stops_on_it(args: list[str], ready: str | None,
                                                                  exported: Path, tmp_path: Path) -> None:
    argv = [a.format(tmp=tmp_path, exported=exported) for a in args]
    proc = subprocess.Popen([sys.executable, "-m", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ignore_sigint)
    try:
        if ready is not None:
            seen = ""
            while ready not in seen and proc.poll() is None:
                seen += proc.stdout.readline() if ready == "serving" else proc.stdout.read(1)
        else:
            time.sleep(3)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)  # read while it exits: what it prints on Ctrl-C may fill a pipe
    finally:
        stop_process(proc)  # SIGKILL if the SIGINT was not honoured: the test fails, it does not hang
    assert proc.returncode == 130, err
