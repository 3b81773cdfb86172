#!/usr/bin/env python3
"""What a deployed backbone costs on this CPU: parameters, FLOPs at 224 px,
and latency of PyTorch eager, TorchScript and ONNX Runtime (docs/export.md).

For the paper's students (MobileNet-v3-large, EfficientNet-B0/B1,
ResNet-18/34), its teachers (ResNet-50/101/152, SwAV's ResNet-50x2) and two
modern small timm models (ConvNeXt-atto, MobileNetV4-conv-small), random
weights (speed does not depend on them), eval mode, fp32:

- parameters of the backbone (classifier removed, what tools/export.py
  writes) and with the 1000-class classifier (what libraries list);
- FLOPs of one 224 px image, counted by torch.utils.flop_counter (a
  multiply-add is 2 FLOPs; convolutions and matrix products only);
- latency at batch 1 and 32, with 1 thread and with every CPU of this
  process: the median of --repeats timed samples per runtime, the runtimes
  interleaved (each repeat runs each once, in a rotating order) so that a
  change of machine load reaches them all alike. The TorchScript and ONNX
  models are tools/export.py's (torch.jit.trace; torch.onnx's exporter,
  dynamic batch), each checked against the eager model first;
- achieved FLOP/s as a share of this machine's peak: a large fp32 matrix
  product at the same thread count, timed as one more runner inside the
  same interleaved samples (so under the same load).

    python benchmarks/deploy.py --quick                 # 3 students, batch 1 and 8, 1 thread: ~3 min on 2 cores
    python benchmarks/deploy.py --out docs/deploy.md    # the whole table
"""

import argparse
import datetime
import io
import os
import platform
import statistics
import time
import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode

from selfsup.core.errors import UserError, cli_main
from selfsup.core.files import atomic_write
from selfsup.models.backbones import create_backbone

# key: (what the table calls it, our -a, role)
MODELS = {
    "mobilenetv3": ("MobileNet-v3-large", "mobilenetv3", "student"),
    "efficientb0": ("EfficientNet-B0", "efficientb0", "student"),
    "efficientb1": ("EfficientNet-B1", "efficientb1", "student"),
    "resnet18": ("ResNet-18", "resnet18", "student"),
    "resnet34": ("ResNet-34", "resnet34", "student"),
    "resnet50": ("ResNet-50", "resnet50", "teacher"),
    "resnet101": ("ResNet-101", "resnet101", "teacher"),
    "resnet152": ("ResNet-152", "resnet152", "teacher"),
    "resnet50w2": ("ResNet-50x2 (SwAV)", "resnet50w2", "teacher"),
    "convnext_atto": ("ConvNeXt-atto", "convnext_atto", "modern"),
    "mobilenetv4_conv_small": ("MobileNetV4-conv-small", "mobilenetv4_conv_small", "modern"),
}
QUICK_MODELS = "mobilenetv3,efficientb0,resnet18"
RUNTIMES = ("eager", "torchscript", "onnxruntime")

# The paper's abstract (arXiv 2104.09124): EfficientNet-B0 has 9.4% / 16.3% of
# the parameters of ResNet-101 / ResNet-50. Its Table 1 #params are not in
# this repository; this ratio is the one count the paper states in text.
PAPER_RATIOS = {("efficientb0", "resnet101"): 0.094, ("efficientb0", "resnet50"): 0.163}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--runtimes", default=",".join(RUNTIMES), help=f"comma-separated, from {', '.join(RUNTIMES)}")
    p.add_argument("--batches", default=None, help="batch sizes, comma-separated (1,32; --quick: 1,8)")
    p.add_argument(
        "--threads", default=None, help="thread counts: numbers or 'all', this process's CPUs (1,all; --quick: 1)"
    )
    p.add_argument("--image-size", default=224, type=int)
    p.add_argument("--repeats", default=None, type=int, help="timed samples per runtime and setting (5; --quick: 3)")
    p.add_argument(
        "--min-sample",
        default=0.2,
        type=float,
        help="seconds a sample lasts at least: fast calls are repeated inside it (0.2)",
    )
    p.add_argument("--quick", action="store_true", help=f"{QUICK_MODELS}, batch 1 and 8, 1 thread, 3 repeats")
    p.add_argument("--out", default="", help="also write the table (markdown) to this file")
    args = p.parse_args(argv)
    defaults = ("1,8", "1", 3) if args.quick else ("1,32", "1,all", 5)
    if args.quick and args.models == ",".join(MODELS):
        args.models = QUICK_MODELS
    args.batches = args.batches or defaults[0]
    args.threads = args.threads or defaults[1]
    args.repeats = args.repeats if args.repeats is not None else defaults[2]
    args.models = [m for m in args.models.split(",") if m]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        raise UserError(f"--models: unknown {', '.join(unknown)}; expected some of {', '.join(MODELS)}")
    args.runtimes = [r for r in args.runtimes.split(",") if r]
    if not args.runtimes or any(r not in RUNTIMES for r in args.runtimes):
        raise UserError(f"--runtimes {','.join(args.runtimes)}: expected some of {', '.join(RUNTIMES)}")
    try:
        args.batches = [int(b) for b in args.batches.split(",") if b]
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        args.threads = sorted({cpus if t == "all" else int(t) for t in args.threads.split(",") if t})
    except ValueError:
        raise UserError("--batches and --threads take comma-separated numbers ('all' for every CPU)") from None
    if not args.batches or min(args.batches) < 1 or not args.threads or min(args.threads) < 1:
        raise UserError("--batches and --threads need positive numbers")
    if args.repeats < 1 or args.image_size < 16 or not args.min_sample > 0:
        raise UserError("--repeats must be 1 or more, --image-size 16 or more, --min-sample positive")
    if args.out:
        folder = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(folder):
            raise UserError(f"--out '{args.out}': its folder '{folder}' does not exist")
    return args


# -- counts -----------------------------------------------------------------------


def count_flops(model, size):
    """FLOPs of one image (torch's own counter)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops()


def classifier_params(model, width):
    """Parameters of the 1000-class Linear the backbone's slot held (what library tables count)."""
    return width * 1000 + 1000


# -- runtimes ---------------------------------------------------------------------


def torchscript_model(model, size):
    """tools/export.py's TorchScript: torch.jit.trace, saved and loaded back."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, torch.zeros(2, 3, size, size), check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        return torch.jit.load(io.BytesIO(buffer.getvalue()), map_location="cpu")


def onnx_bytes(model, size):
    """tools/export.py's ONNX graph (selfsup.export.writers), serialised."""
    from selfsup.export.writers import _onnx_proto

    return _onnx_proto(model, torch.zeros(2, 3, size, size), ["features"]).SerializeToString()


def ort_session(data, threads):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def runners(model, scripted, session):
    """runtime -> function(images tensor) running one forward."""
    found = {}
    found["eager"] = lambda x: model(x)
    if scripted is not None:
        found["torchscript"] = lambda x: scripted(x)
    if session is not None:
        found["onnxruntime"] = lambda x: session.run(None, {"images": x.numpy()})
    return found


def check_equal(model, run, size, name):
    """A runtime's features on 3 images equal eager's (relative 1e-4): it is timed only then."""
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
        got = run(x)
    got = torch.as_tensor(got[0] if isinstance(got, list) else got)
    diff = float((got - ref).abs().max())
    if not diff <= 1e-4 * float(ref.abs().max()):
        raise UserError(f"{name}: its output differs from eager PyTorch by {diff:.3g}; not timed")


def calibrate(run, x, min_sample):
    """Calls per sample so that one sample lasts about min_sample seconds,
    from the second of two warm-up calls (the allocator, TorchScript's
    profiling run and ONNX Runtime's first-run setup happen in the first)."""
    run(x)
    once = max(_timed(lambda: run(x)), 1e-6)
    return max(1, int(round(min_sample / once)))


def time_interleaved(runs, x, repeats, min_sample):
    """name -> median seconds per call; each repeat times every runner once,
    in an order that rotates from one repeat to the next."""
    calls = {name: calibrate(run, x, min_sample) for name, run in runs.items()}
    samples = {name: [] for name in runs}
    names = list(runs)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            seconds = _timed(lambda: [runs[name](x) for _ in range(calls[name])])
            samples[name].append(seconds / calls[name])
    return {name: statistics.median(s) for name, s in samples.items()}


PEAK_N = 1024  # the peak's matrix product: N x N @ N x N in fp32, 2 N^3 FLOPs


def peak_runners(threads, with_ort):
    """The peak as more runners of the interleaved timing, so that it is
    measured under the same load as the models it is compared with: torch's
    GEMM (MKL) and, when it is installed, ONNX Runtime's (MLAS) on the same
    product; the faster of the two is the peak."""
    a, b = torch.randn(PEAK_N, PEAK_N), torch.randn(PEAK_N, PEAK_N)
    found = {"peak torch.mm": lambda _x: torch.mm(a, b)}
    if with_ort:
        from onnx import TensorProto, helper, numpy_helper

        graph = helper.make_graph(
            [helper.make_node("MatMul", ["a", "b"], ["c"])],
            "peak",
            [helper.make_tensor_value_info("a", TensorProto.FLOAT, [PEAK_N, PEAK_N])],
            [helper.make_tensor_value_info("c", TensorProto.FLOAT, [PEAK_N, PEAK_N])],
            [numpy_helper.from_array(b.numpy(), "b")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        session = ort_session(model.SerializeToString(), threads)
        a_np = a.numpy()
        found["peak onnxruntime MatMul"] = lambda _x: session.run(None, {"a": a_np})
    return found


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- the table --------------------------------------------------------------------


def measure(key, args, peaks, log):
    name, arch, role = MODELS[key]
    model, width = create_backbone(arch)
    model.eval()
    size = args.image_size
    row = {"key": key, "name": name, "role": role}
    row["params"] = sum(p.numel() for p in model.parameters())
    row["params_with_fc"] = row["params"] + classifier_params(model, width)
    row["flops"] = count_flops(model, 224)
    flops_at_size = row["flops"] if size == 224 else count_flops(model, size)
    scripted = torchscript_model(model, size) if "torchscript" in args.runtimes else None
    data = None
    if "onnxruntime" in args.runtimes:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            log("=> onnxruntime is not installed: no ONNX Runtime column (pip install 'selfsup[export]')")
        else:
            data = onnx_bytes(model, size)
    row["latency"] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        session = ort_session(data, threads) if data is not None else None
        runs = runners(model, scripted, session)
        for rt, run in runs.items():
            if rt != "eager":
                check_equal(model, run, size, f"{name} {rt}")
        for batch in args.batches:
            x = torch.randn(batch, 3, size, size)
            with torch.no_grad():
                gemm = peak_runners(threads, session is not None)
                medians = time_interleaved({**runs, **gemm}, x, args.repeats, args.min_sample)
            rates = {k: 2 * PEAK_N**3 / medians.pop(k) for k in gemm}
            peak = max(rates.values())
            peaks.setdefault(threads, []).append(peak)
            for k, rate in rates.items():
                peaks.setdefault((threads, k), []).append(rate)
            flops = flops_at_size * batch
            for rt, seconds in medians.items():
                row["latency"][(threads, batch, rt)] = (seconds, flops / seconds / peak)
            log(
                f"   {name:24s} {threads} thr b{batch:<3d} peak {peak / 1e9:5.1f} GFLOP/s  "
                + "  ".join(f"{rt} {s * 1e3:8.1f} ms ({flops / s / 1e9:5.1f} GFLOP/s)" for rt, s in medians.items())
            )
    return row


def params_check(rows):
    """The paper's stated parameter ratio against the counts here (backbone; with classifier)."""
    by = {r["key"]: r for r in rows}
    lines = []
    for (a, b), stated in PAPER_RATIOS.items():
        if a in by and b in by:
            bare = by[a]["params"] / by[b]["params"]
            full = by[a]["params_with_fc"] / by[b]["params_with_fc"]
            lines.append(
                f"{MODELS[a][0]} / {MODELS[b][0]} parameters: {bare:.1%} (backbones), {full:.1%} (with classifiers); "
                f"the paper states {stated:.1%}"
            )
    return lines


def table(rows, args, peaks):
    runtimes = [rt for rt in args.runtimes if any(rt == k[2] for r in rows for k in r["latency"])]
    head = ["model", "role", "params (M)", "+fc (M)", "GFLOPs 224"]
    for threads in args.threads:
        for batch in args.batches:
            head += [f"{rt} b{batch} {threads}t ms (% peak)" for rt in runtimes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], r["role"], f"{r['params'] / 1e6:.2f}", f"{r['params_with_fc'] / 1e6:.2f}"]
        cells.append(f"{r['flops'] / 1e9:.2f}")
        for threads in args.threads:
            for batch in args.batches:
                for rt in runtimes:
                    seconds, share = r["latency"][(threads, batch, rt)]
                    cells.append(f"{seconds * 1e3:.1f} ({share:.0%})")
        lines.append("| " + " | ".join(cells) + " |")
    parts = []
    for t in args.threads:
        each = ", ".join(
            f"{k[1].removeprefix('peak ')} {statistics.median(v) / 1e9:.0f}"
            for k, v in peaks.items()
            if isinstance(k, tuple) and k[0] == t
        )
        parts.append(
            f"{t} thread{'s' if t > 1 else ''}: median {statistics.median(peaks[t]) / 1e9:.0f} GFLOP/s, "
            f"from {min(peaks[t]) / 1e9:.0f} to {max(peaks[t]) / 1e9:.0f} over the settings ({each})"
        )
    return lines, (
        f"Peak: an fp32 {PEAK_N}x{PEAK_N} matrix product, torch.mm and ONNX Runtime's MatMul, timed inside "
        "every setting's interleaved samples; each share is against the faster of the two in its own "
        f"setting. {'; '.join(parts)}."
    )


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = [f"torch {torch.__version__}"]
    try:
        import onnxruntime

        versions.append(f"onnxruntime {onnxruntime.__version__}")
    except ImportError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cpus} CPUs for this process, {', '.join(versions)}; load average {load:.1f} at the start"


@cli_main
def main(argv=None):
    args = parse_args(argv)

    def log(text):
        print(text, flush=True)

    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    where = machine()
    log(f"=> {started}: {where}")
    peaks = {}
    rows = []
    for key in args.models:
        log(f"=> {MODELS[key][0]}")
        rows.append(measure(key, args, peaks, log))
    lines, peak_line = table(rows, args, peaks)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    notes = [
        f"Measured {started} on {where}; load average {load:.1f} at the end.",
        peak_line,
        "Latency: median of "
        f"{args.repeats} interleaved samples (each at least {args.min_sample:g} s), at {args.image_size} px; "
        "% peak = the runtime's FLOP/s over the peak at the same thread count.",
        *params_check(rows),
    ]
    text = "\n".join(lines + [""] + notes)
    print("\n" + text, flush=True)
    if args.out:
        with atomic_write(args.out, "w", what="table") as f:
            f.write(text + "\n")
        log(f"=> wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
