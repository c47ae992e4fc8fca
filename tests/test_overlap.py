"""The roll-over's overlap: a new window re-reads the stream's last K characters. The reference (a whole
sequence through `GPT.forward`) and every fast path (torch decode, both ONNX layouts, any chunking) agree;
files, flags and scores carry it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from conftest import TINY_CONFIG, assert_one_line_error, meta_of, run_cli
from picogpt.errors import PicoError
from picogpt.model import TorchDecoder
from picogpt.runtime import Generator
from picogpt.runtime.decoder import OnnxDecoder
from picogpt.sampling import SamplingConfig
from picogpt.tokenizer import CharTokenizer
from picogpt.windows import plan_chunks, resolve_overlap

N = TINY_CONFIG.context_len  # 16
TOK = CharTokenizer()


@pytest.mark.parametrize("overlap", [0, 1, 4, N - 1])
def test_plan_re_reads_the_overlap_after_each_full_window(overlap: int) -> None:
    chunks = list(plan_chunks(0, 100, N, overlap))
    assert sum(c.take for c in chunks) == 100
    assert chunks[0].replay == 0 and not chunks[0].roll_over  # the first window has nothing to re-read
    for c in chunks[1:]:
        assert c.roll_over and c.pos == 0 and c.replay == overlap
        assert 1 + c.replay + c.take <= N + 1  # slot + replay + new ids fit one window
    # fed one id at a time, new windows start at the same ids
    pos, rolls = 0, []
    for i in range(100):
        (c,) = plan_chunks(pos, 1, N, overlap)
        rolls += [i] if c.roll_over else []
        pos = c.pos + c.replay + c.take + (1 if c.pos == 0 else 0)
    assert rolls == [c.start for c in chunks[1:]]


@pytest.mark.parametrize("overlap", [0, 1, 4, N - 1])
def test_torch_decode_in_any_chunks_equals_the_whole_sequence(random_model, overlap: int) -> None:
    ids = torch.randint(0, TINY_CONFIG.vocab_size, (2, 6 * N + 3), generator=torch.Generator().manual_seed(0))
    ref, _ = random_model(ids, overlap=overlap)
    dec = TorchDecoder(random_model, overlap)
    state = dec.new_state(2)
    steps = np.stack([dec.feed(ids[:, t : t + 1].numpy(), state) for t in range(ids.size(1))], axis=1)
    assert np.abs(steps - ref.detach().numpy()).max() < 1e-5
    state, t = dec.new_state(2), 0
    for n in (5, 2 * N + 1, 1, N, 40):  # prompts that straddle roll-overs
        got = dec.feed(ids[:, t : t + n].numpy(), state)
        t += n
        assert np.abs(got - ref[:, t - 1].detach().numpy()).max() < 1e-5


@pytest.mark.parametrize("overlap", [0, 3, N - 1])
def test_onnx_decoder_matches_torch_with_overlap(random_model, exported_any: Path, overlap: int) -> None:
    ids = np.random.default_rng(1).integers(0, TINY_CONFIG.vocab_size, (2, 5 * N))
    ref, _ = random_model(torch.from_numpy(ids), overlap=overlap)
    dec = OnnxDecoder(exported_any, overlap=overlap)
    state = dec.new_state(2)
    got = np.stack([dec.feed(ids[:, t : t + 1], state) for t in range(ids.shape[1])], axis=1)
    assert np.abs(got - ref.detach().numpy()).max() < 1e-4
    prompt = TOK.encode("to be, or not")
    text = Generator(exported_any, overlap=overlap).generate("to be, or not", 4 * N, SamplingConfig(temperature=0))
    assert text == TOK.decode(random_model.generate(prompt, 4 * N, SamplingConfig(temperature=0), overlap=overlap)[0])


def test_files_carry_their_overlap_and_older_files_read_none(exported: Path, tmp_path: Path) -> None:
    assert meta_of(exported)["picogpt.overlap"] == str(resolve_overlap(None, N)) == str(N // 4)
    assert OnnxDecoder(exported).overlap == N // 4
    old = tmp_path / "old.onnx"
    m = onnx.load(str(exported))
    keep = [p for p in m.metadata_props if p.key != "picogpt.overlap"]
    del m.metadata_props[:]
    m.metadata_props.extend(keep)
    onnx.save(m, str(old))
    assert OnnxDecoder(old).overlap == 0
    proc = run_cli("picogpt.runtime", "-m", str(old), "--prompt", "abc", "--max-new-tokens", str(3 * N), "--stats")
    assert proc.returncode == 0 and "overlap 0:" in proc.stderr, proc.stderr
    for value in ("-1", str(N), "x"):
        for p in m.metadata_props:
            if p.key == "picogpt.format_version":
                bad = m.metadata_props.add()
                bad.key, bad.value = "picogpt.overlap", value
                break
        onnx.save(m, str(tmp_path / "bad.onnx"))
        with pytest.raises(PicoError, match="picogpt.overlap"):
            OnnxDecoder(tmp_path / "bad.onnx")
        del m.metadata_props[-1]


def test_run_stats_report_the_overlap_share(exported: Path) -> None:
    proc = run_cli("picogpt.runtime", "-m", str(exported), "--prompt", "abc", "--max-new-tokens", str(10 * N),
                   "--stats", "--overlap", "6")
    assert proc.returncode == 0, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "overlap 6:" in line and "new windows" in line and "% of the time" in line, line
    windows = int(line.split("overlap 6: ")[1].split()[0])
    assert windows == sum(c.roll_over for c in plan_chunks(3, 10 * N - 1, N, 6))


@pytest.mark.parametrize("value", ["-1", str(N), "1000", "x"])
def test_overlap_out_of_range_is_one_error_line(exported: Path, tiny_ckpt: Path, tmp_path: Path, value: str) -> None:
    fragment = "--overlap"
    for module, args in (("picogpt.runtime", ["-m", str(exported), "--prompt", "x"]),
                         ("picogpt.runtime.web", [str(exported), "-o", str(tmp_path / "site")]),
                         ("picogpt.train.evaluate", [str(tiny_ckpt)]),
                         ("picogpt.export", [str(tiny_ckpt), "-o", str(tmp_path / "m.onnx"), "--no-verify"]),
                         ("picogpt.bench", ["--onnx", str(exported), "--quick"])):
        proc = run_cli(module, *args, "--overlap", value)
        if value == "x":  # click refuses a non-number itself (usage error, exit 2) and names the flag
            assert proc.returncode == 2 and "--overlap" in proc.stderr and "Traceback" not in proc.stderr
        else:
            assert_one_line_error(proc, fragment)
    assert not (tmp_path / "site").exists() and not (tmp_path / "m.onnx").exists()


def test_eval_scores_with_the_overlap_and_shows_the_plain_protocol(tiny_ckpt: Path, corpus_file: Path) -> None:
    proc = run_cli("picogpt.train.evaluate", str(tiny_ckpt), "--data", str(corpus_file), "--overlap", "4")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "re-reads 4 characters" in out and "plain protocol" in out, out
    assert "by characters of context in the window" in out and "1-2 characters of context, windows 2+: none" in out
    plain = run_cli("picogpt.train.evaluate", str(tiny_ckpt), "--data", str(corpus_file), "--overlap", "0")
    assert "no overlap" in plain.stdout and "plain protocol" not in plain.stdout
    assert "windows 2+: at most" in plain.stdout  # without overlap, each window's first targets are blind


def test_export_writes_the_chosen_overlap_and_verifies_with_it(tiny_ckpt: Path, corpus_file: Path,
                                                               tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    proc = run_cli("picogpt.export", str(tiny_ckpt), "-o", str(out), "--overlap", "5", "--data", str(corpus_file))
    assert proc.returncode == 0, proc.stderr
    assert meta_of(out)["picogpt.overlap"] == "5"
    verify = run_cli("picogpt.runtime", "-m", str(out), "--verify")
    assert verify.returncode == 0, verify.stderr
