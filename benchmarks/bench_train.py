"""Training speed: minillm (hand-written backward, AdamW) against PyTorch on the same model, in one process.

    python benchmarks/bench_train.py                    # both shapes, numba backend, 2 threads
    python benchmarks/bench_train.py --shapes small --rounds 3

Needs the `reference` extra (torch, transformers). Each side runs the same training step on the
same shape, batch and random weights (minillm's initialisation, copied into HF's model):

  minillm  loss_and_grads(model, ids, targets); clip_grad_norm(grads, 1.0); AdamW.step(grads)
  PyTorch  GPT2LMHeadModel(ids).logits -> F.cross_entropy; backward(); clip_grad_norm_(1.0);
           torch.optim.AdamW.step()  (eval mode: no dropout, as minillm has none)

Rounds alternate between the two (a pause between them, so that neither inherits the other's
spinning threads); each round times --steps steps after a warm-up step; the median and best
tokens/s of the rounds are printed, and their ratio. Before timing, one step of each must give
the same loss within 1e-4. Then a per-operation profile of one minillm step, and the peak memory
of each side (peak resident memory of a child process that runs 3 steps of only that side,
minus the same child's memory before the model was built).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import contextmanager

# name -> (n_layer, n_embd, n_head, context, batch, vocab)
SHAPES = {
    "small": (4, 256, 4, 128, 16, 4096),
    "medium": (6, 384, 6, 256, 8, 4096),
}
PAUSE_S = 0.2


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--backend", default="numba")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--memory-child", nargs=2, metavar=("SIDE", "SHAPE"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def limit_threads(n: int) -> None:
    """Before numpy or torch loads: OpenBLAS and numba read their thread counts at import."""
    for name in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[name] = str(n)


# ---- the two sides -------------------------------------------------------------------------
def minillm_side(shape, backend):
    from minillm.model.config import GPT2Config
    from minillm.model.gpt2 import GPT2
    from minillm.model.params import random_params
    from minillm.training import AdamW, clip_grad_norm, loss_and_grads

    L, C, H, T, B, V = shape
    config = GPT2Config(vocab_size=V, n_positions=T, n_embd=C, n_layer=L, n_head=H)
    model = GPT2(config, random_params(config, seed=0), backend=backend)
    optimizer = AdamW(model.named_parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)

    def step(ids, targets):
        loss, grads = loss_and_grads(model, ids, targets)
        clip_grad_norm(grads, 1.0)
        optimizer.step(grads)
        return loss
    return model, step


def torch_side(shape, minillm_model):
    import torch
    import torch.nn.functional as F
    from transformers import GPT2Config as HFConfig
    from transformers import GPT2LMHeadModel

    L, C, H, T, B, V = shape
    hf = GPT2LMHeadModel(HFConfig(vocab_size=V, n_positions=T, n_embd=C, n_layer=L, n_head=H,
                                  activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                                  attn_pdrop=0.0)).float().eval()
    if minillm_model is not None:        # the very same starting weights
        state = {f"transformer.{k}": torch.from_numpy(v.copy())
                 for k, v in minillm_model.named_parameters().items()}
        hf.load_state_dict(state, strict=False)
    decay = [p for p in hf.parameters() if p.ndim >= 2]
    no_decay = [p for p in hf.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=1e-4, betas=(0.9, 0.95))

    def step(ids, targets):
        logits = hf(torch.from_numpy(ids)).logits
        loss = F.cross_entropy(logits.view(-1, V), torch.from_numpy(targets).view(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        optimizer.step()
        return float(loss)
    return step


def batches(shape, n, seed=0):
    import numpy as np
    L, C, H, T, B, V = shape
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))) for _ in range(n)]


# ---- timing --------------------------------------------------------------------------------
def time_round(step, data) -> float:
    """tokens/s of len(data) steps."""
    start = time.perf_counter()
    for ids, targets in data:
        step(ids, targets)
    return sum(ids.size for ids, _ in data) / (time.perf_counter() - start)


def compare(shape_name, args):
    shape = SHAPES[shape_name]
    model, mini_step = minillm_side(shape, args.backend)
    torch_step = torch_side(shape, model)
    ids, targets = batches(shape, 1, seed=99)[0]
    mini_loss, torch_loss = mini_step(ids, targets), torch_step(ids, targets)    # warm-up too
    assert abs(mini_loss - torch_loss) < 1e-4, f"first losses differ: {mini_loss} vs {torch_loss}"
    results = defaultdict(list)
    for r in range(args.rounds):
        data = batches(shape, args.steps, seed=r)
        for side, step in (("minillm", mini_step), ("torch", torch_step)):
            time.sleep(PAUSE_S)
            results[side].append(time_round(step, data))
    L, C, H, T, B, V = shape
    print(f"\n{shape_name}: {L} layers x {C} wide, {H} heads, context {T}, batch {B}, vocab {V} "
          f"(first loss {mini_loss:.5f} vs torch {torch_loss:.5f})")
    for side in ("minillm", "torch"):
        print(f"  {side:8s} median {statistics.median(results[side]):7.0f} tokens/s   "
              f"best {max(results[side]):7.0f}")
    ratio = statistics.median(results["minillm"]) / statistics.median(results["torch"])
    print(f"  minillm / torch (medians): {ratio:.2f}x")
    return model


# ---- where a minillm step spends its time ---------------------------------------------------
@contextmanager
def timed_functions(modules_and_names, totals):
    """Replace module.name by a wrapper adding its wall time to totals[label] (restored after)."""
    originals = []
    for module, name, label in modules_and_names:
        original = getattr(module, name)

        def wrapper(*a, _original=original, _label=label, **k):
            start = time.perf_counter()
            try:
                return _original(*a, **k)
            finally:
                totals[_label] += time.perf_counter() - start
        originals.append((module, name, original))
        setattr(module, name, wrapper)
    try:
        yield
    finally:
        for module, name, original in originals:
            setattr(module, name, original)


def profile_step(shape_name, args):
    from minillm.training import AdamW, backprop, clip_grad_norm, loss_and_grads

    shape = SHAPES[shape_name]
    model, _ = minillm_side(shape, args.backend)
    backend = model.backend
    optimizer = AdamW(model.named_parameters(), lr=1e-4)
    ids, targets = batches(shape, 1)[0]
    loss_and_grads(model, ids, targets)                              # compile / warm
    totals = defaultdict(float)
    hooks = [(backend, m, f"forward {m}") for m in ("linear", "layer_norm", "gelu", "attention_train")]
    hooks += [(backend, "linear_backward", "backward linear"), (backend, "attention_backward", "backward attention")]
    hooks += [(backend, "layer_norm_backward", "backward layer_norm"),
              (backend, "gelu_backward", "backward gelu"),
              (backprop, "embedding_backward", "backward embedding")]
    hooks += [(backend, "cross_entropy", "loss (fused softmax + grad)")]
    with timed_functions(hooks, totals):
        start = time.perf_counter()
        _, grads = loss_and_grads(model, ids, targets)
        totals["total loss_and_grads"] = time.perf_counter() - start
    start = time.perf_counter()
    clip_grad_norm(grads, 1.0)
    totals["clip_grad_norm"] = time.perf_counter() - start
    start = time.perf_counter()
    optimizer.step(grads)
    totals["AdamW.step"] = time.perf_counter() - start
    accounted = sum(v for k, v in totals.items() if not k.startswith("total") and k not in ("clip_grad_norm", "AdamW.step"))
    totals["other (LM head, residuals, reshapes)"] = totals["total loss_and_grads"] - accounted
    print(f"\nprofile of one minillm step, {shape_name} ({args.backend} backend):")
    for label, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {label:40s} {seconds * 1e3:8.1f} ms")


# ---- peak memory ---------------------------------------------------------------------------
def rss_mib() -> float:
    """This process's resident memory now, from /proc (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_child(side, shape_name, backend):
    """Runs in a child process: the highest resident memory (MiB) seen while building the model
    and running 3 steps, above what the loaded libraries (and compiled kernels) already hold."""
    import threading
    shape = SHAPES[shape_name]
    if side == "minillm":       # compile (or load) the kernels first: that is not training memory
        tiny = (1, 64, 1, 8, 1, shape[5])
        step = minillm_side(tiny, backend)[1]
        step(*batches(tiny, 1)[0])
    else:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    baseline, peak, done = rss_mib(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.002)
    sampler = threading.Thread(target=sample)
    sampler.start()
    step = minillm_side(shape, backend)[1] if side == "minillm" else torch_side(shape, None)
    for ids, targets in batches(shape, 3):
        step(ids, targets)
    done.set()
    sampler.join()
    print(json.dumps({"peak_mib": peak[0] - baseline}))


def peak_memory(shape_name, args):
    print(f"\npeak memory, {shape_name} (model + optimiser + 3 steps, beyond the loaded libraries):")
    for side in ("minillm", "torch"):
        child = subprocess.run([sys.executable, __file__, "--memory-child", side, shape_name,
                                "--backend", args.backend, "--threads", str(args.threads)],
                               capture_output=True, text=True, check=True)
        print(f"  {side:8s} {json.loads(child.stdout.splitlines()[-1])['peak_mib']:7.0f} MiB")


def main(argv=None):
    args = parse_args(argv)
    limit_threads(args.threads)
    if args.memory_child:
        memory_child(*args.memory_child, args.backend)
        return
    import torch
    torch.set_num_threads(args.threads)
    print(f"threads: {args.threads} (torch, OpenBLAS, numba); backend {args.backend}")
    for shape_name in args.shapes:
        compare(shape_name, args)
        profile_step(shape_name, args)
        peak_memory(shape_name, args)


if __name__ == "__main__":
    main()
