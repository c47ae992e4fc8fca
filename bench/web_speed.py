"""The `picogpt-web` page's speed in headless Chromium: page load to first token, and greedy decode tokens/s.

    python -m picogpt.bench.web_speed SITE [--runs 3] [--tokens 1000] [--chromium /usr/bin/chromium]
                                           [--parity MODEL.onnx [--parity-chars 600]] [--json FILE]

SITE is a folder written by `picogpt-web` (with `--ort-dir`, so nothing comes from the network). Each run
opens the page fresh, times navigation start -> `picogpt.ready` -> the first generated character, then
generates `--tokens` greedy characters three times (the first is slower: the JIT is still tiering up).
With `--parity`, it then compares the page's greedy text with native onnxruntime's (`Generator` on MODEL,
the file the page was written from) on a few prompts and prints how many leading characters agree.
Needs the dev extra (playwright) and a system Chromium. Timings are only as steady as the machine: run it
with nothing else busy.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import click

FIRST_TOKEN_JS = """async () => {
  await picogpt.ready;
  const ready = performance.now();
  await picogpt.generate('ROMEO:\\n', {temperature: 0, maxNewTokens: 1});
  return [ready, performance.now()];
}"""
DECODE_JS = """async (n) => {
  const m = await picogpt.ready;
  const speeds = [];
  for (let i = 0; i < 3; i++) {
    await picogpt.generate('ROMEO:\\n', {temperature: 0, maxNewTokens: n});
    speeds.push(m.stats.tokensPerSecond);
  }
  return speeds;
}"""


PARITY_PROMPTS = ["ROMEO:\n", "JULIET:\nO ", "MENENIUS:\n", "KING HENRY:\nWhat", "the king ", "\n\n",
                  "LADY MACBETH:\n", "To be"]
PARITY_JS = "async ([p, n]) => await picogpt.generate(p, {temperature: 0, maxNewTokens: n})"


def parity(page, model: Path, chars: int) -> list[int]:
    """Leading characters of the page's greedy text equal to native onnxruntime's, per prompt."""
    import os

    from picogpt.runtime import Generator
    from picogpt.sampling import SamplingConfig

    gen = Generator(model, threads=1)
    same = []
    for prompt in PARITY_PROMPTS:
        want = gen.generate(prompt, chars, sampling=SamplingConfig(temperature=0.0))
        got = page.evaluate(PARITY_JS, [prompt, chars])
        same.append(chars if got == want else min(chars, len(os.path.commonprefix([got, want]))))
        click.echo(f"parity {prompt!r:22} {same[-1]}/{chars} characters equal to native")
    return same


@click.command()
@click.argument("site", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--runs", type=click.IntRange(min=1), default=3, show_default=True, help="Fresh page loads.")
@click.option("--tokens", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Greedy characters per generation.")
@click.option("--chromium", default="/usr/bin/chromium", show_default=True)
@click.option("--parity", "model", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The .onnx file the page was written from: compare greedy text with native onnxruntime.")
@click.option("--parity-chars", type=click.IntRange(min=1), default=600, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the runs and the machine as a result file (picogpt-bench report).")
def main(site: Path, runs: int, tokens: int, chromium: str, model: Path | None, parity_chars: int,
         json_path: Path | None) -> None:
    """Print, per page load: ready and first-token times (ms after navigation start) and tokens/s."""
    from playwright.sync_api import sync_playwright

    from picogpt.runtime.web import ORT_WEB_VERSION, start_server

    server = start_server(site)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rows, same = [], []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            for run in range(runs):
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
                ready, first = page.evaluate(FIRST_TOKEN_JS)
                speeds = page.evaluate(DECODE_JS, tokens)
                rows.append({"ready_ms": ready, "first_token_ms": first, "tokens_per_s": speeds})
                click.echo(f"run {run}: ready {ready:.0f} ms, first token {first:.0f} ms after navigation start; "
                           f"greedy {tokens} tokens: {', '.join(f'{s:.0f}' for s in speeds)} tokens/s")
                if model is not None and run == runs - 1:
                    same = parity(page, model, parity_chars)
                    click.echo(f"parity: {min(same)}-{max(same)} of {parity_chars} characters equal "
                               f"({sum(n == parity_chars for n in same)} of {len(same)} prompts all the way)")
                page.close()
            version = browser.version
            browser.close()
    finally:
        server.shutdown()
    if json_path is not None:
        from picogpt.bench.results import envelope, write_result

        sidecar = json.loads((site / "model.json").read_text())  # written by picogpt-web beside the model
        write_result(json_path, envelope(
            "web-speed", "python -m picogpt.bench.web_speed", rows,
            extra_versions={"chromium": version, "onnxruntime-web": ORT_WEB_VERSION}, tokens=tokens,
            model=f"{sidecar['model']} ({sidecar['metadata'].get('picogpt.quantization', 'none')})",
            parity={"chars": parity_chars, "same": same} if same else None))


if __name__ == "__main__":
    main()
