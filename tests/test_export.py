"""`picogpt-export`: the ONNX graph reproduces torch (llama2.c style: reference vs fast, same inputs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_CONFIG, assert_one_line_error, run_cli, train_tiny
from picogpt.contract import FINGERPRINT_CHARS
from picogpt.generation import greedy_text
from picogpt.model import GPT
from picogpt.runtime.decoder import OnnxDecoder
from picogpt.tokenizer import CharTokenizer

CFG = TINY_CONFIG


def input_dims(path: Path) -> dict[str, list]:
    import onnx

    m = onnx.load(str(path))
    return {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input}


def test_portable_graph_has_dynamic_axes_and_no_if(exported_portable: Path) -> None:
    import onnx

    dims = input_dims(exported_portable)
    assert dims["input_ids"] == ["batch", "new"]
    assert dims["past_key"][3] == "past" and dims["past_key"][1] == "batch"
    m = onnx.load(str(exported_portable))
    assert "If" not in {n.op_type for n in m.graph.node}
    assert m.opset_import[0].version >= 17


def test_fused_graph_is_small_and_uses_ort_kernels(exported: Path) -> None:
    import onnx

    m = onnx.load(str(exported))
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("GroupQueryAttention") == CFG.n_layer
    assert ops.count("LayerNormalization") == 2 * CFG.n_layer + 1 and "SkipLayerNormalization" not in ops
    assert len(ops) <= 14 * CFG.n_layer + 12 and "If" not in ops
    dims = input_dims(exported)
    assert dims["input_ids"] == ["batch", "new"]
    assert dims["past_key_0"] == ["batch", CFG.n_head, CFG.n_positions, CFG.head_size]


def test_onnx_matches_torch_across_windows_and_batches(random_model: GPT, exported_any: Path) -> None:
    dec = OnnxDecoder(exported_any, threads=1)
    ids = torch.randint(0, CFG.vocab_size - 8, (3, 4 * CFG.context_len + 5))
    with torch.no_grad():
        ref, _ = random_model(ids, overlap=dec.overlap)  # the file's overlap, as generation runs it
    state = dec.new_state(3)
    # a prefill that crosses two window boundaries, then single steps across the next ones
    logits = dec.feed(ids[:, :40].numpy(), state)
    assert np.abs(logits - ref[:, 39].numpy()).max() < 1e-4
    worst = 0.0
    for t in range(40, ids.shape[1]):
        logits = dec.feed(ids[:, t : t + 1].numpy(), state)
        worst = max(worst, float(np.abs(logits - ref[:, t].numpy()).max()))
    assert worst < 1e-4


def test_chunked_prefill_after_a_cache_matches_torch(random_model: GPT, exported_any: Path) -> None:
    """Several new ids onto a half-full window (a REPL turn): the causal mask must be bottom-right."""
    dec = OnnxDecoder(exported_any, threads=1)
    ids = torch.randint(0, CFG.vocab_size - 8, (2, 4 * CFG.context_len))
    with torch.no_grad():
        ref, _ = random_model(ids, overlap=dec.overlap)
    state, t = dec.new_state(2), 0
    for size in (5, 7, 1, 12, 20, 3, 9):  # chunks that start mid-window and cross boundaries
        logits = dec.feed(ids[:, t : t + size].numpy(), state)
        t += size
        assert np.abs(logits - ref[:, t - 1].numpy()).max() < 1e-4, (size, t)


def test_context_vector_protocol_matches_torch_decode_state(random_model: GPT, exported_any: Path) -> None:
    dec = OnnxDecoder(exported_any, threads=1)
    ids = torch.randint(0, CFG.vocab_size - 8, (2, 2 * CFG.context_len + 3))
    with torch.no_grad():
        _, tstate = random_model.decode(ids, random_model.new_state(2), dec.overlap)
    ostate = dec.new_state(2)
    dec.feed(ids.numpy(), ostate)
    assert ostate.pos == tstate.pos and np.array_equal(ostate.recent, tstate.recent.numpy())
    assert np.allclose(ostate.context, tstate.context.numpy(), atol=1e-5)
    assert np.allclose(ostate.hidden_sum, tstate.hidden_sum.numpy(), atol=1e-4)


@pytest.mark.parametrize("layout", ["fused", "portable"])
def test_cli_export_fp32_verifies_and_is_self_describing(tiny_ckpt: Path, corpus_file: Path,
                                                         tmp_path: Path, layout: str) -> None:
    out = tmp_path / "model.onnx"
    proc = run_cli("picogpt.export", str(tiny_ckpt), "-o", str(out), "--data", str(corpus_file),
                   "--graph", layout, "--quantize", "none")
    assert proc.returncode == 0, proc.stderr
    assert "max|dlogit|" in proc.stdout and "320/320" in proc.stdout
    dec = OnnxDecoder(out)
    meta = dec.metadata
    assert json.loads(meta["config"])["context_len"] == 16
    assert meta["quantization"] == "none" and meta["step"] == "30" and meta["layout"] == layout
    assert meta["format_version"] == "2" and json.loads(meta["io"])["inputs"][0] == "input_ids"
    assert CharTokenizer.from_json(meta["tokenizer"]) == CharTokenizer()
    fp = json.loads(meta["fingerprint"])
    assert len(fp["greedy"]) == FINGERPRINT_CHARS
    assert greedy_text(dec, dec.tokenizer, fp["prompt"], FINGERPRINT_CHARS) == fp["greedy"]
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temp files left behind


@pytest.mark.slow
@pytest.mark.parametrize("method", ["int8", "int4", "int4-gptq", "int8-weights"])
def test_cli_export_quantized_agrees(tiny_ckpt: Path, corpus_file: Path, tmp_path: Path, method: str) -> None:
    out, js = tmp_path / f"{method}.onnx", tmp_path / "export.json"
    proc = run_cli("picogpt.export", str(tiny_ckpt), "-o", str(out), "--quantize", method,
                   "--data", str(corpus_file), "--json", str(js))
    assert proc.returncode == 0, proc.stderr
    assert "[INFO]" not in proc.stderr and "[INFO]" not in proc.stdout  # onnxruntime's quantizers log per node
    row = verification(js)[method]
    # the tiny model; the real one is measured in docs/design.md ("Quantization")
    assert row["top1_agreement"] >= 0.9 and abs(row["val_loss_delta"]) < 0.1, row
    assert OnnxDecoder(out).metadata["quantization"] == method
    if method == "int4-gptq":  # calibrated on the first 90% of --data: 64 sequences of 3 windows of 16
        assert "GPTQ on 3,072 calibration characters" in proc.stdout


@pytest.mark.slow
def test_cli_export_reads_prepared_bin_like_training(tiny_ckpt: Path, corpus_file: Path, tmp_path: Path) -> None:
    """--data takes what picogpt-train takes: a prepared train.bin (with val.bin beside it) as well as text."""
    from picogpt.data.text import encode_array

    ids, _ = encode_array(corpus_file.read_text(encoding="utf-8"), CharTokenizer())
    ids[: len(ids) * 9 // 10].tofile(tmp_path / "train.bin")
    ids[len(ids) * 9 // 10 :].tofile(tmp_path / "val.bin")
    out = tmp_path / "m.onnx"
    js_bin, js_text = tmp_path / "bin.json", tmp_path / "text.json"
    proc = run_cli("picogpt.export", str(tiny_ckpt), "-o", str(out), "--quantize", "int4-gptq", "--data",
                   str(tmp_path / "train.bin"), "--json", str(js_bin))
    assert proc.returncode == 0, proc.stderr
    assert "GPTQ on 3,072 calibration characters" in proc.stdout
    from_text = run_cli("picogpt.export", str(tiny_ckpt), "-o", str(out), "--data", str(corpus_file),
                        "--json", str(js_text))
    assert from_text.returncode == 0, from_text.stderr
    # the same val split either way, so the same verification windows and the same fp32 val loss
    fp32 = verification(js_bin)["none"]["val_loss_onnx"]
    assert fp32 is not None and fp32 == verification(js_text)["none"]["val_loss_onnx"]


def moved_text(ckpt: Path, tmp: Path) -> Path:
    """A copy of `ckpt` whose training text is gone: the export finds no text unless given one."""
    state = torch.load(ckpt, weights_only=True)
    state["data_config"]["path"] = str(tmp / "moved-away.txt")
    torch.save(state, tmp / "text-gone.pt")
    return tmp / "text-gone.pt"


def verification(js: Path) -> dict[str, dict]:
    """The verification table picogpt-export wrote with --json: {file name: its row}."""
    return {row["name"]: row for row in json.loads(js.read_text())["verification"]}


@pytest.mark.slow
def test_cli_export_auto_times_every_candidate(tiny_ckpt: Path, corpus_file: Path, tmp_path: Path) -> None:
    from picogpt.export.quantize import METHODS

    out = tmp_path / "auto.onnx"
    js = tmp_path / "auto.json"
    proc = run_cli("picogpt.export", str(tiny_ckpt), "-o", str(out), "--quantize", "auto", "--data",
                   str(corpus_file), "--json", str(js))
    assert proc.returncode == 0, proc.stderr
    rows = verification(js)
    assert set(rows) == {"none", *METHODS}
    chosen = json.loads(js.read_text())["quantization"]
    assert f"auto: chose {chosen}" in proc.stdout
    within = {n: r["ms_per_step"] for n, r in rows.items() if n != "none" and r["val_loss_delta"] <= 0.02}
    assert within[chosen] == min(within.values())  # the fastest file within 0.02 nats of torch
    assert OnnxDecoder(out).metadata["quantization"] == chosen
    # without any text, auto leaves the calibrated method out and says so
    no_text = {"PICOGPT_DATA": str(tmp_path / "none"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = run_cli("picogpt.export", str(moved_text(tiny_ckpt, tmp_path)), "-o", str(out), "--quantize", "auto",
                   "--json", str(js), env=no_text)
    assert proc.returncode == 0, proc.stderr
    assert "auto leaves out int4-gptq" in proc.stderr and "int4-gptq" not in verification(js)


def test_export_bad_inputs(tiny_ckpt: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(tiny_ckpt.read_bytes()[:5000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {"encoder.weight": torch.zeros(3, 3)}, "model_args": {"n_head": 2}}, foreign)
    out = str(tmp_path / "m.onnx")
    assert_one_line_error(run_cli("picogpt.export", str(tmp_path / "none.pt"), "-o", out), "not found")
    assert_one_line_error(run_cli("picogpt.export", str(garbage), "-o", out), "corrupt")
    assert_one_line_error(run_cli("picogpt.export", str(truncated), "-o", out), "corrupt")
    assert_one_line_error(run_cli("picogpt.export", str(foreign), "-o", out), "another architecture")
    assert_one_line_error(run_cli("picogpt.export", str(tiny_ckpt), "-o", str(tmp_path / "no" / "m.onnx")),
                          "does not exist")
    no_text = {"PICOGPT_DATA": str(tmp_path / "none"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    assert_one_line_error(run_cli("picogpt.export", str(moved_text(tiny_ckpt, tmp_path)), "-o", out, "--quantize",
                                  "int4-gptq", env=no_text), "needs calibration text")
    bad = run_cli("picogpt.export", str(tiny_ckpt), "-o", out, "--quantize", "int3")
    assert bad.returncode == 2 and "int3" in bad.stderr and "Traceback" not in bad.stderr
    assert not Path(out).exists()


def test_nanogpt_and_seed_layouts_load(random_model: GPT, tmp_path: Path) -> None:
    from picogpt.checkpoint import read_checkpoint

    sd = {f"_orig_mod.{k}": v for k, v in random_model.state_dict().items()}
    nano = tmp_path / "ckpt.pt"
    torch.save({"model": sd, "model_args": {"n_head": CFG.n_head, "n_layer": CFG.n_layer}, "iter_num": 7,
                "best_val_loss": torch.tensor(1.5)}, nano)
    loaded = read_checkpoint(nano)
    assert loaded.source == "nanogpt" and loaded.model.config == CFG and loaded.step == 7
    from picogpt.bench.report import model_costs  # the bench reads checkpoints through the same reader

    assert model_costs("torch-naive", nano)[0] == CFG.num_params(include_positions=True) * 4
    seed = tmp_path / "log.pkl"
    torch.save({"best_weight": random_model.state_dict(), "losses": [1.0, 2.0]}, seed)
    loaded = read_checkpoint(seed)
    assert loaded.source == "picogpt-seed"
    assert loaded.model.config.context_len == CFG.context_len
    for a, b in zip(loaded.model.state_dict().values(), random_model.state_dict().values()):
        assert torch.equal(a, b)


def test_dropout_is_training_only(corpus_file: Path, tmp_path: Path) -> None:
    ckpt = train_tiny(tmp_path / "run", corpus_file, "--max-iters", "4", "--eval-interval", "4", "--dropout", "0.2")
    onnx_path = tmp_path / "m.onnx"
    proc = run_cli("picogpt.export", str(ckpt), "-o", str(onnx_path), "--data", str(corpus_file))
    assert proc.returncode == 0, proc.stderr  # fp32 parity holds: the exported model runs without dropout
    assert json.loads(OnnxDecoder(onnx_path).metadata["config"])["dropout"] == 0.0


def test_export_verifies_on_the_text_the_checkpoint_was_trained_on(tiny_ckpt: Path, corpus_file: Path,
                                                                    tmp_path: Path) -> None:
    """Without --data, the stored --data of the run is the verification text (as picogpt-eval reads it)."""
    js_stored, js_given = tmp_path / "stored.json", tmp_path / "given.json"
    empty = {"PICOGPT_DATA": str(tmp_path / "none"), "XDG_CACHE_HOME": str(tmp_path / "cache")}  # no tinyshakespeare
    proc = run_cli("picogpt.export", str(tiny_ckpt), "-o", str(tmp_path / "a.onnx"), "--json", str(js_stored),
                   env=empty)
    assert proc.returncode == 0 and "no validation text" not in proc.stderr, proc.stderr
    given = run_cli("picogpt.export", str(tiny_ckpt), "-o", str(tmp_path / "b.onnx"), "--data", str(corpus_file),
                    "--json", str(js_given))
    assert given.returncode == 0, given.stderr
    assert verification(js_stored)["none"]["val_loss_onnx"] == verification(js_given)["none"]["val_loss_onnx"]


def test_int8_weights_graph_computes_what_the_codes_hold(random_model: GPT, exported_any: Path, tmp_path: Path) -> None:
    """int8-weights stores codes but keeps fp32 arithmetic: torch with the dequantized weights (codes x
    column scale) is the reference, and onnxruntime folds the expansion away when the session loads."""
    import copy

    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from picogpt.export.quantize import quantize

    path, folded = tmp_path / "w8.onnx", tmp_path / "folded.onnx"
    quantize(exported_any, path, "int8-weights")
    stored = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if t.name.endswith("_int8")]
    ref = copy.deepcopy(random_model)
    linears = [m for n, m in ref.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    assert len(stored) == len(linears) == 4 * TINY_CONFIG.n_layer and all(s.dtype == np.int8 for s in stored)
    for module in linears:
        w = module.weight.detach().numpy().T  # [in, out]: one scale per output column
        scale = np.abs(w).max(axis=0) / 127
        codes = np.rint(w / scale).astype(np.int8)
        assert sum(np.array_equal(codes, s) for s in stored) == 1
        module.weight = torch.nn.Parameter(torch.from_numpy((codes * scale).T.astype(np.float32)))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # constant folding is basic
    opts.optimized_model_filepath = str(folded)
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    assert "Cast" not in {n.op_type for n in onnx.load(str(folded)).graph.node}  # nothing left to run per step
    ids = torch.randint(0, TINY_CONFIG.vocab_size - 8, (2, 2 * TINY_CONFIG.context_len + 3))
    dec = OnnxDecoder(path, threads=1)
    with torch.no_grad():
        want, _ = ref(ids, overlap=dec.overlap)
    state = dec.new_state(2)
    got = np.stack([dec.feed(ids[:, t : t + 1].numpy(), state) for t in range(ids.shape[1])], axis=1)
    assert np.abs(got - want.numpy()).max() < 1e-4
