"""`picogpt-run`: stream generated text to stdout (onnxruntime + numpy only)."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click

from picogpt.errors import PicoError, cli_errors, one_line_usage, path_type
from picogpt.runtime.generator import Generator, Stream
from picogpt.sampling import SamplingConfig
from picogpt.system import check_threads

CHAT_STOP = "</A>"


def chat_prompt(question: str) -> str:
    """The seed's chat format: the question between <Q> tags, then the answer tag."""
    return f"<Q> {question.strip()} </Q>\n<A>"


def write_stream(pieces: Iterator[str]) -> None:
    """Print one sample as it is produced; `Generator.stats` then says how long it took."""
    try:
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
    finally:
        sys.stdout.write("\n")
        sys.stdout.flush()


@click.command(cls=one_line_usage(click.Command), context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-m", "--model", type=path_type(), default=None,
              help="A PicoGPT .onnx file (default: the bundled tinyshakespeare model).")
@click.option("--prompt", type=str, default=None, help="Prompt text (default: read stdin). Empty = start of a line.")
@click.option("--max-new-tokens", type=int, default=500, show_default=True)
@click.option("--temperature", type=float, default=0.8, show_default=True, help="0 = greedy.")
@click.option("--top-k", type=int, default=None)
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--repetition-penalty", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=None)
@click.option("--stop", multiple=True, help="Stop before this string (repeatable).")
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--overlap", type=int, default=None,
              help="Characters each new window re-reads from the text before it (default: the file's; 0 = none).")
@click.option("--num-samples", type=int, default=1, show_default=True)
@click.option("--interactive", is_flag=True, help="REPL: each line continues the same stream.")
@click.option("--chat", is_flag=True, help="Wrap prompts as '<Q> ... </Q>\\n<A>' and stop at '</A>'.")
@click.option("--verify", is_flag=True, help="Check the file's parity fingerprint on this machine, then exit.")
@click.option("--stats", is_flag=True, help="Print ms/token and tokens/s to stderr.")
@cli_errors
def main(model: Path | None, prompt: str | None, max_new_tokens: int, temperature: float, top_k: int | None,
         top_p: float, repetition_penalty: float, seed: int | None, stop: tuple[str, ...], threads: int,
         overlap: int | None, num_samples: int, interactive: bool, chat: bool, verify: bool, stats: bool) -> None:
    """Generate text with a PicoGPT ONNX model: no torch needed."""
    # Ctrl-C keeps what was printed and exits 130, even when started from a shell's background job
    # (which starts it with SIGINT ignored, so Python would not install its own handler).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    check_threads(threads)
    if interactive and num_samples != 1:
        raise PicoError(f"--interactive continues one stream: --num-samples must be 1, got {num_samples}")
    t_load = time.perf_counter()
    gen = Generator(model, threads=threads, overlap=overlap)
    load_s = time.perf_counter() - t_load
    sampling = SamplingConfig(temperature, top_k, top_p, repetition_penalty)
    stops = list(stop) + ([CHAT_STOP] if chat else [])
    if verify:
        ok, expected, got = gen.verify()
        if not ok:
            raise PicoError(f"parity fingerprint mismatch: expected {expected!r}, got {got!r}")
        click.echo(f"fingerprint OK: {len(got)} greedy characters match the exporter's")
        return
    if interactive:
        run_repl(gen, max_new_tokens, gen.new_stream(sampling, seed), stops, chat)
        return
    if prompt is None:
        prompt = read_stdin()
    text = chat_prompt(prompt) if chat else prompt
    # the request is checked when the stream is made: a bad setting fails before anything is printed
    pieces = gen.stream(text, max_new_tokens, sampling, seed, stops, num_samples)
    if num_samples > 1:
        print_samples(pieces, num_samples, max_new_tokens)
        return
    if not chat:  # like nanoGPT's sample.py, the output starts with the prompt itself
        sys.stdout.write(prompt)
    write_stream(pieces)
    st = gen.stats
    if stats and st.tokens:
        per = st.ms_per_token
        click.echo(f"load {load_s * 1000:.0f} ms | prefill {st.prompt_ids:,} chars in {st.prefill_s * 1000:.1f} ms "
                   f"| {st.tokens} tokens, {per:.3f} ms/token after the first, {1000 / per if per else 0:,.0f} "
                   f"tokens/s | overlap {gen.decoder.overlap}: {st.rollovers} new windows, "
                   f"{st.overlap_share:.1%} of the time", err=True)


def print_samples(steps: Iterator[list[str]], num_samples: int, max_new: int) -> None:
    """Several samples in lockstep, with a progress line on stderr; Ctrl-C prints what each has so far."""
    samples: list[str] = [""] * num_samples
    try:
        for i, pieces in enumerate(steps):
            samples = [s + p for s, p in zip(samples, pieces)]
            if i % 50 == 0:
                click.echo(f"\r{num_samples} samples: {min(i, max_new)}/{max_new} characters", err=True, nl=False)
        click.echo("", err=True)
    except KeyboardInterrupt:
        click.echo("", err=True)
        for i, s in enumerate(samples):
            click.echo(f"--- sample {i + 1} (interrupted) ---\n{s}")
        raise
    for i, s in enumerate(samples):
        click.echo(f"--- sample {i + 1} ---\n{s}")


def read_stdin() -> str:
    """The prompt piped on stdin ("" on a terminal), refused in one line if it is not UTF-8."""
    if sys.stdin is None or sys.stdin.isatty():
        return ""
    raw = sys.stdin.buffer.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PicoError(f"the prompt on stdin is not valid UTF-8 (byte {exc.start})") from None


def run_repl(gen: Generator, max_new: int, stream: Stream, stops: list[str], chat: bool) -> None:
    """Each line the user types is fed after everything so far: one `Stream`, so the text, its context vector
    and the sampler (its random draws and repetition-penalty history) continue from line to line."""
    click.echo("picogpt interactive: type a prompt, Enter to generate, Ctrl-D to quit.", err=True)
    for line in sys.stdin:
        line = line.rstrip("\n")
        text = chat_prompt(line) if chat else line + "\n"
        write_stream(gen.stream(text, max_new, stop=stops, stream=stream))


if __name__ == "__main__":
    main()
