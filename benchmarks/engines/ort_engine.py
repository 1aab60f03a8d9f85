"""ONNX Runtime: GPT-2 exported as a prefill graph and a decode graph with explicit KV tensors.

Export (once, cached in the work dir): engines.torch_gpt2 loads the benchmark's weights, is
exported with torch.onnx.export (the TorchScript exporter, whose graphs the optimiser's GPT-2
patterns were written for), and each graph goes through
`python -m onnxruntime.transformers.optimizer --model_type gpt2` (LayerNorm and FastGelu
fusions) with its weights as external data. Sessions: ORT_ENABLE_ALL, intra_op_num_threads =
the benchmark's threads, inter_op_num_threads=1, spinning stopped after each run.

Decoding feeds each step's present K/V (the past with the new position appended) back as the
next step's past, as OrtValues, so the cache never goes through NumPy.
"""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

from engines import torch_gpt2

OPSET = 17


def exported_graphs(folder: Path, onnx_dir: Path) -> tuple[Path, Path]:
    """The optimised prefill and decode graphs of the model in `folder`; exported once."""
    onnx_dir.mkdir(parents=True, exist_ok=True)
    graphs = onnx_dir / "prefill_opt.onnx", onnx_dir / "decode_opt.onnx"
    if all(g.exists() for g in graphs):
        return graphs
    print(f"ONNX Runtime: exporting and optimising the graphs into {onnx_dir} (once, ~2 min) ...",
          flush=True)
    _export(folder, onnx_dir)
    for raw, optimised in zip((onnx_dir / "prefill.onnx", onnx_dir / "decode.onnx"), graphs):
        _optimise(raw, optimised)
        raw.unlink()
    return graphs


def _export(folder: Path, onnx_dir: Path) -> None:
    import torch

    from minillm.checkpoint.weights import load_checkpoint

    config, params = load_checkpoint(folder)
    core = torch_gpt2.GPT2Core(config, params).eval()
    L, H, d = config.n_layer, config.n_head, config.head_dim
    present = torch_gpt2.kv_names("present_", L)
    past = torch_gpt2.kv_names("past_", L)
    ids = torch.zeros((2, 8), dtype=torch.long)
    one = torch.zeros((2, 1), dtype=torch.long)
    past_kv = tuple(torch.zeros((2, H, 8, d)) for _ in past)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")          # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            torch_gpt2.Prefill(core), (ids,), onnx_dir / "prefill.onnx", dynamo=False,
            opset_version=OPSET, input_names=["ids"], output_names=["logits", *present],
            dynamic_axes={"ids": {0: "batch", 1: "seq"}, "logits": {0: "batch"},
                          **{n: {0: "batch", 2: "seq"} for n in present}})
        torch.onnx.export(
            torch_gpt2.Decode(core), (one, *past_kv), onnx_dir / "decode.onnx", dynamo=False,
            opset_version=OPSET, input_names=["ids", *past], output_names=["logits", *present],
            dynamic_axes={"ids": {0: "batch"}, "logits": {0: "batch"},
                          **{n: {0: "batch", 2: "past"} for n in past},
                          **{n: {0: "batch", 2: "total"} for n in present}})


def _optimise(raw: Path, optimised: Path) -> None:
    command = [sys.executable, "-m", "onnxruntime.transformers.optimizer", "--input", str(raw),
               "--output", str(optimised), "--model_type", "gpt2", "--num_heads", "12",
               "--hidden_size", "768", "--use_external_data_format"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"onnxruntime.transformers.optimizer failed on {raw}:\n{done.stderr[-3000:]}")


class OrtGPT2:
    """Prefill and greedy generation through the two ONNX Runtime sessions."""

    def __init__(self, prefill_graph: Path, decode_graph: Path, threads: int,
                 profile_prefix: Path | None = None):
        """profile_prefix: turn on ORT's per-node profiler, its JSON files named from this
        (profile_ort.py reads them; `end_profiling()` on a session writes one)."""
        import onnxruntime as ort

        self.ort = ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ORT's idle threads keep spinning after a run by default, taking the cores from
        # whichever engine runs next; this stops them when each run returns.
        options.add_session_config_entry("session.force_spinning_stop", "1")
        if profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = str(profile_prefix)
        providers = ["CPUExecutionProvider"]
        self.prefill_session = ort.InferenceSession(str(prefill_graph), options, providers=providers)
        self.decode_session = ort.InferenceSession(str(decode_graph), options, providers=providers)
        self.outputs = [o.name for o in self.decode_session.get_outputs()]
        self.past_names = [i.name for i in self.decode_session.get_inputs()][1:]

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        """Last-position logits (B, V) of ids (B, T); the K/V come back too, as in a real prefill."""
        return self.prefill_session.run(["logits"], {"ids": ids})[0]

    def generate(self, ids: np.ndarray, n_new: int) -> np.ndarray:
        """Greedy: prompt ids (B, T) -> (B, T + n_new)."""
        ortvalue = self.ort.OrtValue.ortvalue_from_numpy
        values = self.prefill_session.run_with_ort_values(self.outputs, {"ids": ortvalue(ids)})
        tokens = [values[0].numpy().argmax(-1)]
        for _ in range(n_new - 1):
            feed = dict(zip(self.past_names, values[1:]))
            feed["ids"] = ortvalue(tokens[-1][:, None])
            values = self.decode_session.run_with_ort_values(self.outputs, feed)
            tokens.append(values[0].numpy().argmax(-1))
        return np.concatenate([ids, np.stack(tokens, axis=1)], axis=1)
