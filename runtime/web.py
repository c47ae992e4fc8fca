"""`picogpt-web MODEL.onnx -o DIR`: a static folder that generates text in the visitor's browser.

The folder holds index.html, picogpt.js (tokenizer, window protocol, sampler), the model file and
model.json (the file's `picogpt.*` metadata), run by onnxruntime-web's WASM backend. The model file is
written for the browser from whatever file is given: quantized linears computing in fp32 on the same codes
(runtime/webquant.py), its cache outputs cut to the new rows (runtime/webgraph.py), and its fingerprint the
greedy text it gives natively. The page's promise: its greedy text is `picogpt-run -m SITE/<model file>`'s.
ORT itself comes
from a pinned CDN URL checked by subresource integrity, or, with `--ort-dir`, from an installed npm
package copied into the folder (the page then works offline). Torch-free: onnxruntime + numpy + click.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import html as html_lib
import json
import os
import re
import shutil
import tempfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import click

from picogpt.contract import FINGERPRINT_CHARS, FINGERPRINT_PROMPT, META_PREFIX
from picogpt.errors import PicoError, cli_errors, one_line_usage, path_type
from picogpt.generation import greedy_text
from picogpt.paths import remove_stale_work_dirs
from picogpt.runtime.decoder import OnnxDecoder
from picogpt.runtime.generator import Generator
from picogpt.runtime.protomodel import edit_model
from picogpt.runtime.webfolder import SIDECAR, check_target, page_model_name, script_json
from picogpt.runtime.webgraph import has_external_data, web_variant
from picogpt.runtime.webquant import fp32_model

ORT_WEB_VERSION = "1.30.0"  # npm onnxruntime-web, pinned: the integrity hashes below are of its files
ORT_MODULE = "ort.wasm.bundle.min.mjs"  # the WASM-only build with the emscripten glue bundled in
ORT_WASM = "ort-wasm-simd-threaded.wasm"
ORT_CDN = f"https://cdn.jsdelivr.net/npm/onnxruntime-web@{ORT_WEB_VERSION}/dist/"
# sha384 of the npm package's dist files (tests/test_web_cli.py checks them against node_modules)
ORT_INTEGRITY = {
    ORT_MODULE: "sha384-PLWz+nHEVHpjwBsO0YVdvQj6n5814Iv8E3b8FG0Rp/uIAtjFMCKOpP66iPzedrIG",
    ORT_WASM: "sha384-vjBJ1z7qrhkTyYsNqKeF6c7N+nOJSU94czEo+tvZcu8G75JparGq9kB+kTnEUNVM",
}
ORT_MAX_IR_VERSION = 13  # onnxruntime-web 1.30 refuses newer files; the exporter writes 14 (see patch_ir_version)


def integrity(data: bytes) -> str:
    """The subresource-integrity string of `data`."""
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def read_model(path: Path, overlap: int | None = None) -> tuple[Generator, dict[str, str]]:
    """Load and check the file as picogpt-run does (missing, not ONNX, not PicoGPT: one-line PicoError)."""
    gen = Generator(path, threads=1, overlap=overlap)  # its decoder has read and checked the picogpt.* metadata
    return gen, {META_PREFIX + k: v for k, v in gen.metadata.items()}


def patch_ir_version(data: bytes) -> bytes:
    """The model bytes with `ir_version` lowered to what onnxruntime-web reads.

    The ONNX IR version only says which protobuf features a file may use; PicoGPT files use none newer
    than IR 8, so lowering the number is safe. The field is the protobuf's first one (tag 0x08, a one-byte
    varint), so this is a one-byte edit; anything else is left alone.
    """
    if len(data) > 2 and data[0] == 0x08 and ORT_MAX_IR_VERSION < data[1] < 0x80:
        return data[:1] + bytes([ORT_MAX_IR_VERSION]) + data[2:]
    return data


def find_ort_dist(ort_dir: Path) -> Path:
    """The `dist` folder of onnxruntime-web under `ort_dir` (a prefix, its node_modules, the package or dist)."""
    for cand in (ort_dir / "node_modules" / "onnxruntime-web", ort_dir / "onnxruntime-web", ort_dir, ort_dir.parent):
        package = cand / "package.json"
        if package.is_file() and (cand / "dist" / ORT_WASM).is_file():
            try:
                version = json.loads(package.read_text())["version"]
            except (ValueError, KeyError):
                continue
            if version != ORT_WEB_VERSION:
                raise PicoError(f"--ort-dir {ort_dir} holds onnxruntime-web {version}; this picogpt needs "
                                f"{ORT_WEB_VERSION} (npm install onnxruntime-web@{ORT_WEB_VERSION})")
            return cand / "dist"
    raise PicoError(f"--ort-dir {ort_dir}: no onnxruntime-web package there "
                    f"(npm install onnxruntime-web@{ORT_WEB_VERSION} --prefix {ort_dir})")


def copy_ort(dist: Path, folder: Path) -> dict[str, str]:
    """Copy ORT's module and (gzipped: 14 MB -> 3.7 MB) WASM binary into `folder`/ort; their URLs and hashes."""
    out = folder / "ort"
    out.mkdir()
    module = (dist / ORT_MODULE).read_bytes()
    (out / ORT_MODULE).write_bytes(module)
    # ".gzip", not ".gz": static hosts serve .gz with Content-Encoding, which would defeat the integrity check
    wasm = gzip.compress((dist / ORT_WASM).read_bytes(), compresslevel=9, mtime=0)
    (out / (ORT_WASM + ".gzip")).write_bytes(wasm)
    licence = dist.parent / "LICENSE"
    if licence.is_file():
        shutil.copyfile(licence, out / "LICENSE")
    return {"module": f"./ort/{ORT_MODULE}", "module_integrity": integrity(module),
            "wasm": f"./ort/{ORT_WASM}.gzip", "wasm_integrity": integrity(wasm)}


def cdn_ort(base: str) -> dict[str, str]:
    """ORT from `base` (the pinned CDN URL or a mirror of the same dist folder), checked by the browser
    against the npm package's hashes."""
    from urllib.parse import urlsplit

    if not base.startswith(("https://", "http://")):
        raise PicoError(f"--ort-url {base} is not an http(s):// URL")
    # Only URL characters (RFC 3986): quotes, angle brackets, spaces or backslashes could leave the page's
    # script or attribute that holds the URL.
    if not re.fullmatch(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+", base) or "'" in base or not urlsplit(base).netloc:
        raise PicoError(f"--ort-url {base!r} is not a plain http(s):// URL (no quotes, brackets, spaces or other "
                        "characters a URL does not hold)")
    base = base if base.endswith("/") else base + "/"
    return {"module": base + ORT_MODULE, "module_integrity": ORT_INTEGRITY[ORT_MODULE],
            "wasm": base + ORT_WASM, "wasm_integrity": ORT_INTEGRITY[ORT_WASM]}


def render_index(ort: dict[str, str], title: str) -> str:
    """index.html with the ORT location, its hashes and the title filled in."""
    page = resources.files("picogpt.runtime") / "webpage" / "index.html"
    html = page.read_text(encoding="utf-8")
    import_map = {"imports": {"onnxruntime-web": ort["module"]},
                  "integrity": {ort["module"]: ort["module_integrity"]}}
    # each value escaped for where it goes: JSON inside <script> (no "</script>" can appear), HTML text
    return (html.replace("__IMPORT_MAP__", script_json(import_map))
            .replace("__ORT_WASM__", script_json({"url": ort["wasm"], "integrity": ort["wasm_integrity"]}))
            .replace("__TITLE__", html_lib.escape(title)))


def web_model_bytes(model: Path, gen: Generator) -> tuple[bytes, str]:
    """The model file as the page runs it, and a note on what differs from the original."""
    data, counts = fp32_model(model.read_bytes())
    notes = [f"quantized linears rewritten to compute in fp32 ({', '.join(f'{v} {k}' for k, v in counts.items())}; "
             "runtime/webquant.py)"] if counts else []
    data = patch_ir_version(data)
    if gen.decoder.layout != "fused":
        return data, "; ".join(["the original graph (ir_version lowered for onnxruntime-web if it was newer)", *notes])
    c = gen.config
    return web_variant(data, c.n_layer, c.n_head, c.head_size), "; ".join([
        "fused graph, web variant: one output new_rows (the cache rows written, sliced by web_row_start/"
        "web_row_end) replaces present_key_i/present_value_i (runtime/webgraph.py); ir_version lowered for ORT-web",
        *notes])


def refingerprint(path: Path, overlap: int) -> dict[str, str]:
    """Store in the written file its overlap and the greedy text it gives natively (the page's promise:
    `picogpt-run -m` on this file prints the page's greedy text); returns the file's picogpt.* metadata."""
    decoder = OnnxDecoder(path, threads=1, overlap=overlap)
    fp = json.loads(decoder.metadata.get("fingerprint", "{}") or "{}")
    prompt = fp.get("prompt") or FINGERPRINT_PROMPT
    greedy = greedy_text(decoder, decoder.tokenizer, prompt, FINGERPRINT_CHARS)
    stored = {} if decoder.metadata.get("overlap") == str(overlap) else {META_PREFIX + "overlap": str(overlap)}
    if fp.get("greedy") != greedy:
        stored[META_PREFIX + "fingerprint"] = json.dumps({"prompt": prompt, "greedy": greedy})
    if stored:
        path.write_bytes(edit_model(path.read_bytes(), metadata=stored))
        decoder = OnnxDecoder(path, threads=1)
    return {META_PREFIX + k: v for k, v in decoder.metadata.items()}


def fill_folder(folder: Path, model: Path, gen: Generator, ort: dict[str, str] | None, ort_dist: Path | None) -> None:
    """Write every file of the page into the (empty) `folder`."""
    data, note = web_model_bytes(model, gen)
    name = page_model_name(model)
    (folder / name).write_bytes(data)
    meta = refingerprint(folder / name, gen.decoder.overlap)
    sidecar = {"model": name, "graph": note, "ort_web": ORT_WEB_VERSION, "metadata": meta}
    (folder / SIDECAR).write_text(json.dumps(sidecar, indent=1) + "\n", encoding="utf-8")
    ort = copy_ort(ort_dist, folder) if ort_dist is not None else ort
    (folder / "index.html").write_text(render_index(ort, f"PicoGPT: {model.stem}"), encoding="utf-8")
    module = resources.files("picogpt.runtime") / "webpage" / "picogpt.js"
    (folder / "picogpt.js").write_text(module.read_text(encoding="utf-8"), encoding="utf-8")


def write_page(model: Path, out: Path, ort_dir: Path | None, ort_url: str | None = None,
               overlap: int | None = None) -> Path:
    """Build the folder beside `out` and rename it into place at the end: a failure leaves no half-written page."""
    if ort_dir is not None and ort_url is not None:
        raise PicoError("--ort-dir and --ort-url exclude each other: ORT is either copied in or loaded from a URL")
    ort = None if ort_dir is not None else cdn_ort(ort_url or ORT_CDN)
    if not str(out):
        raise PicoError("-o is empty: give a folder")
    out = out.resolve()  # `-o .` and `-o ..` name a folder too
    check_target(out)
    if out in model.resolve().parents:
        raise PicoError(f"-o {out} holds the model {model}: replacing the folder would delete it; choose another")
    if model.is_file() and has_external_data(model.read_bytes()):
        raise PicoError(f"{model} keeps its weights in a separate data file, which the page cannot load: export it "
                        "again as one file (picogpt-export writes one)")
    gen, _ = read_model(model, overlap)
    ort_dist = find_ort_dist(ort_dir) if ort_dir is not None else None
    parent = out.parent
    remove_stale_work_dirs(parent, f".{out.name}.picogpt-web-")
    remove_stale_work_dirs(parent, f".{out.name}.old-")
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.picogpt-web-{os.getpid()}-", dir=parent))
    except OSError as exc:
        raise PicoError(f"-o {out} cannot be written ({exc.strerror})") from None
    old = None
    try:
        fill_folder(work, model, gen, ort, ort_dist)
        os.chmod(work, 0o755)  # mkdtemp makes it 0700: a static host must be able to read it
        if out.exists():  # a page written earlier: swap it out, then remove it
            old = out.with_name(f".{out.name}.old-{os.getpid()}-")
            out.rename(old)
        try:
            work.rename(out)
        except OSError:
            if old is not None:  # put the earlier page back rather than leave nothing
                old.rename(out)
                old = None
            raise
    except OSError as exc:
        raise PicoError(f"-o {out}: writing the page failed ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


class PageHandler(SimpleHTTPRequestHandler):
    """Serves a page folder: modules as JavaScript, quietly, readable cross-origin (as a CDN serves ORT)."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".js": "text/javascript", ".wasm": "application/wasm", ".gzip": "application/octet-stream"}

    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass  # quiet: the page's own readout says what happens


def start_server(folder: Path, port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server for `folder` on 127.0.0.1 (port 0: any free one), not yet serving."""
    try:
        return ThreadingHTTPServer(("127.0.0.1", port), functools.partial(PageHandler, directory=str(folder)))
    except OSError as exc:
        raise PicoError(f"--port {port}: cannot listen on 127.0.0.1 ({exc.strerror})") from None


def serve(folder: Path, port: int) -> None:
    """Serve `folder` on 127.0.0.1 until Ctrl-C (WASM needs http://, not file://)."""
    server = start_server(folder, port)
    click.echo(f"serving {folder} at http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C to stop)")
    try:
        server.serve_forever()
    finally:
        server.server_close()


@click.command(cls=one_line_usage(click.Command), context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=path_type(), required=False)
@click.option("-o", "--output", "out", type=path_type(), default=Path("picogpt-web"),
              show_default=True, help="The folder to write (replaced if picogpt-web wrote it before).")
@click.option("--ort-dir", type=path_type(), default=None,
              help=f"An installed npm onnxruntime-web@{ORT_WEB_VERSION} (its --prefix, node_modules or package): "
                   "copy ORT into the folder, so the page works offline. Default: the pinned CDN URL.")
@click.option("--ort-url", default=None, help=f"Load ORT from this copy of onnxruntime-web@{ORT_WEB_VERSION}'s dist "
              f"folder instead (a mirror or your own host; the same integrity hashes apply). Default: {ORT_CDN}")
@click.option("--overlap", type=int, default=None,
              help="Characters each new window re-reads (default: the file's own; 0 = none).")
@click.option("--serve", "do_serve", is_flag=True, help="Then serve the folder on 127.0.0.1 for a local preview.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="For --serve.")
@cli_errors
def main(model: Path | None, out: Path, ort_dir: Path | None, ort_url: str | None, overlap: int | None,
         do_serve: bool, port: int) -> None:
    """Write a static web page that runs MODEL (default: the bundled model) in the visitor's browser."""
    from picogpt.runtime.generator import bundled_model_path

    model = model if model is not None else bundled_model_path()
    write_page(model, out, ort_dir, ort_url, overlap)
    source = "the folder" if ort_dir else (ort_url or "the pinned CDN")
    click.echo(f"wrote {out}/ ({folder_size(out) / 1e6:.2f} MB; ORT from {source}, onnxruntime-web {ORT_WEB_VERSION})")
    if do_serve:
        serve(out, port)


if __name__ == "__main__":
    main()
