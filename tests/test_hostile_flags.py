"""Every flag is checked before any work, and the one-line error names the flag at fault: non-finite floats,
integers past 64 bits, values no run can use; and the Python API names the argument of a wrong type."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import pytest

from conftest import TINY, assert_one_line_error, run_main
from picogpt.bench.cli import main as bench_main
from picogpt.data.prepare import main as prepare_main
from picogpt.errors import PicoError
from picogpt.export.cli import main as export_main
from picogpt.runtime.cli import main as runtime_main
from picogpt.runtime.web import main as web_main
from picogpt.train.cli import main as train_main
from picogpt.train.evaluate import main as eval_main

FAST = [*TINY, "--batch-size", "4", "--seq-windows", "2", "--eval-iters", "1", "--quiet", "--no-report"]
BIG = str(2**64)

TRAIN_FLOATS = ["--max-minutes", "--lr", "--cooldown-frac", "--dropout", "--val-percent"]
TRAIN_INTS = ["--max-iters", "--batch-size", "--seq-windows", "--cooldown-windows", "--warmup-iters",
              "--eval-interval", "--eval-iters", "--threads", "--seed", "--context-len", "--n-layer", "--n-head",
              "--n-embd"]


def train(corpus: Path, out: Path, *extra: str):
    return run_main(train_main, "--dataset", "text", "--data", str(corpus), "--out", str(out), "--max-iters", "2",
                    *FAST, *extra)


@pytest.mark.parametrize("main, args, named", [
    (web_main, ["--port", "99999"], "--port"),
    (runtime_main, ["--top-k", "x"], "--top-k"),
    (train_main, ["--batch-size", "abc"], "--batch-size"),
    (train_main, ["--no-such-flag"], "--no-such-flag"),
    (eval_main, [], "CHECKPOINT"),
    (export_main, [], "CHECKPOINT"),
    (prepare_main, ["wikipedia", "--num-proc", "0"], "--num-proc"),
    (bench_main, ["--rounds", "0"], "--rounds"),
    (bench_main, ["quality", "--recipes"], "--recipes"),
])
def test_a_flag_click_refuses_is_one_error_line_too(main, args: list[str], named: str) -> None:
    """What click checks itself (types, ranges, unknown or missing arguments): one line, not a usage block."""
    proc = run_main(main, *args)
    assert proc.returncode == 2 and "Usage:" not in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert_one_line_error(proc, named)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("flag", TRAIN_FLOATS)
def test_train_refuses_a_non_finite_float(flag: str, value: str, corpus_file: Path, tmp_path: Path) -> None:
    assert_one_line_error(train(corpus_file, tmp_path / "o", flag, value), flag)
    assert not (tmp_path / "o").exists()  # refused before the folder is made


@pytest.mark.parametrize("flag", TRAIN_INTS)
def test_train_refuses_an_integer_past_64_bits(flag: str, corpus_file: Path, tmp_path: Path) -> None:
    assert_one_line_error(train(corpus_file, tmp_path / "o", flag, BIG), flag)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, flag", [
    (["--context-len", "1"], "--context-len"), (["--n-head", "0"], "--n-head"), (["--n-layer", "0"], "--n-layer"),
    (["--n-embd", "30", "--n-head", "4"], "--n-embd"), (["--dropout", "1.0"], "--dropout"),
    (["--lr", "1e300"], "--lr"), (["--lr", "0"], "--lr"), (["--warmup-iters", "-1"], "--warmup-iters"),
    (["--seq-windows", str(10**9)], "--seq-windows"), (["--cooldown-windows", "10000"], "--cooldown-windows"),
    (["--max-minutes", "-3"], "--max-minutes"), (["--cooldown-frac", "2"], "--cooldown-frac"),
])
def test_train_refuses_values_no_run_can_use(args: list[str], flag: str, corpus_file: Path, tmp_path: Path) -> None:
    proc = train(corpus_file, tmp_path / "o", *args)
    assert_one_line_error(proc, flag)
    assert not (tmp_path / "o" / "ckpt.pt").exists() and "step 0" not in proc.stdout


@pytest.mark.parametrize("value", ["0", "-1", "100", "250"])
def test_wikipedia_val_percent_is_checked_by_train_and_prepare(value: str, tmp_path: Path) -> None:
    files = str(tmp_path / "none-*.jsonl")
    proc = run_main(train_main, "--dataset", "wikipedia", "--data-files", files, "--out", str(tmp_path / "o"),
                    "--val-percent", value, *FAST)
    assert_one_line_error(proc, "--val-percent")
    proc = run_main(prepare_main, "wikipedia", "--data-files", files, "--out", str(tmp_path / "p"),
                    "--val-percent", value)
    assert_one_line_error(proc, "--val-percent")
    assert not (tmp_path / "o").exists() and not (tmp_path / "p").exists()


@pytest.mark.parametrize("args, flag", [
    (["--temperature", "nan"], "--temperature"), (["--temperature", "inf"], "--temperature"),
    (["--top-p", "nan"], "--top-p"), (["--repetition-penalty", "inf"], "--repetition-penalty"),
    (["--repetition-penalty", "nan"], "--repetition-penalty"), (["--max-new-tokens", BIG], "--max-new-tokens"),
    (["--top-k", BIG], "--top-k"), (["--seed", BIG], "--seed"), (["--threads", BIG], "--threads"),
    (["--num-samples", BIG], "--num-samples"), (["--interactive", "--num-samples", "3"], "--num-samples"),
    (["--model", ""], "--model"),
])
def test_run_refuses_bad_flags_before_loading(args: list[str], flag: str) -> None:
    proc = run_main(runtime_main, "--prompt", "A", "--max-new-tokens", "3", *args)
    assert_one_line_error(proc, flag)
    assert proc.stdout == ""


@pytest.mark.parametrize("args, flag", [
    (["--opset", "99"], "--opset"), (["--opset", str(10**12)], "--opset"), (["--opset", "16"], "--opset"),
    (["--opset", BIG], "--opset"), (["--threads", BIG], "--threads"), (["--threads", "0"], "--threads"),
])
def test_export_refuses_bad_flags_before_reading_the_checkpoint(args: list[str], flag: str, tmp_path: Path) -> None:
    missing = tmp_path / "not-read.pt"  # never opened: the flags are refused first
    assert_one_line_error(run_main(export_main, str(missing), "-o", str(tmp_path / "m.onnx"), *args), flag)


@pytest.mark.parametrize("args, flag", [
    (["--rounds", BIG], "--rounds"), (["--tokens", BIG], "--tokens"), (["--threads", "x"], "--threads"),
    (["--cores", "999999"], "--cores"),
])
def test_bench_refuses_bad_flags_before_the_work(args: list[str], flag: str, tiny_ckpt: Path) -> None:
    assert_one_line_error(run_main(bench_main, str(tiny_ckpt), "--quick", *args), flag)


@pytest.mark.parametrize("minutes", ["nan", "inf", "0", "-1"])
def test_bench_quality_minutes_are_finite_and_positive(minutes: str, tmp_path: Path) -> None:
    assert_one_line_error(run_main(bench_main, "quality", "--minutes", minutes, "--out", str(tmp_path / "q")),
                          "--minutes")


@pytest.mark.parametrize("args, flag", [(["--batches", BIG], "--batches"), (["--threads", BIG], "--threads")])
def test_eval_refuses_bad_flags(args: list[str], flag: str, tiny_ckpt: Path) -> None:
    assert_one_line_error(run_main(eval_main, str(tiny_ckpt), *args), flag)


def test_eval_on_too_short_text_names_its_own_flag(tiny_ckpt: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("the king speaks.\n" * 10)
    proc = run_main(eval_main, str(tiny_ckpt), "--data", str(short))
    assert_one_line_error(proc, "--data")
    assert "--seq-windows" not in proc.stderr  # eval has no such flag


# ---- the Python API: a wrong type names the argument and what it must be ------------------------------------


@pytest.fixture(scope="module")
def generator(exported: Path):
    from picogpt.runtime import Generator

    return Generator(exported)


def api_cases():
    from picogpt.runtime import Generator, SamplingConfig

    return [
        (lambda g, m: g.generate(None), "prompt"),
        (lambda g, m: g.generate(5), "prompt"),
        (lambda g, m: g.generate(b"ROMEO"), "prompt"),
        (lambda g, m: SamplingConfig(top_k=2.5), "top_k"),
        (lambda g, m: SamplingConfig(top_k="3"), "top_k"),
        (lambda g, m: SamplingConfig(temperature="0.5"), "temperature"),
        (lambda g, m: SamplingConfig(temperature=None), "temperature"),
        (lambda g, m: SamplingConfig(top_p="1"), "top_p"),
        (lambda g, m: SamplingConfig(repetition_penalty=[1.2]), "repetition_penalty"),
        (lambda g, m: Generator(m, threads="2"), "threads"),
        (lambda g, m: Generator(m, threads=1.5), "threads"),
        (lambda g, m: g.generate("A", max_new_tokens="5"), "max_new_tokens"),
        (lambda g, m: g.generate("A", max_new_tokens=5.0), "max_new_tokens"),
        (lambda g, m: g.generate("A", seed=1.5), "seed"),
        (lambda g, m: g.generate("A", seed="1"), "seed"),
        (lambda g, m: g.generate("A", num_samples=2.0), "num_samples"),
        (lambda g, m: g.generate("A", sampling="greedy"), "sampling"),
        (lambda g, m: g.generate("A", sampling={"temperature": 0}), "sampling"),
    ]


@pytest.mark.parametrize("case", range(18))
def test_api_type_errors_name_the_argument(case: int, generator, exported: Path) -> None:
    call, name = api_cases()[case]
    with pytest.raises(TypeError) as info:
        call(generator, exported)
    assert isinstance(info.value, PicoError) and str(info.value).startswith(name), str(info.value)
    assert "must be" in str(info.value)


@pytest.mark.parametrize("sampling", [{"temperature": 1e-320}, {"temperature": 1e-300}, {"temperature": 5e-324},
                                      {"repetition_penalty": 1e-320, "temperature": 0.8},
                                      {"repetition_penalty": 1e308, "temperature": 0.8},
                                      {"repetition_penalty": 1e308, "temperature": 1e-320}])
def test_extreme_sampling_values_give_text_without_warnings(sampling: dict, generator) -> None:
    from picogpt.runtime import SamplingConfig

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning from numpy fails the test
        text = generator.generate("the king", 60, sampling=SamplingConfig(**sampling), seed=1)
    assert isinstance(text, str)
    if sampling.get("repetition_penalty", 1.0) == 1.0:  # a temperature this small is greedy sampling's limit
        assert text == generator.generate("the king", 60, sampling=SamplingConfig(temperature=0))
    else:  # a penalty this strong still ranks the logits: the same seed gives the same text
        assert text == generator.generate("the king", 60, sampling=SamplingConfig(**sampling), seed=1)


def test_one_stream_continued_from_two_threads_is_refused(generator) -> None:
    from picogpt.runtime import SamplingConfig

    session = generator.new_stream(SamplingConfig(temperature=0), seed=0)
    first = generator.stream("the king", 50, stream=session)
    next(first)  # this thread is in the middle of the stream
    errors: list[str] = []

    def other() -> None:
        try:
            list(generator.stream("and", 5, stream=session))
        except PicoError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(errors) == 1 and "another thread" in errors[0]
    rest = "".join(first)  # the first stream goes on undisturbed
    assert len(rest) > 0
    assert "".join(generator.stream("and", 5, stream=session))  # and once it is done, the stream continues
