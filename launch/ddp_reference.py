#!/usr/bin/env python3
"""PyTorch CPU DDP reference for `autorate bench --model mlp|vgg|resnet20` (run it through launch/ddp-reference).

The same benchmark as autorate's MLP row: MLP-BN 784,1024,1024,1024,10 (each hidden layer Linear
without bias, BatchNorm1d, ReLU; the head Linear with bias), softmax cross-entropy, plain SGD,
global batch 256 split over the processes (shares differ by at most one), synthetic data. PyTorch's
DistributedDataParallel with the gloo backend, one process per rank started with
torch.multiprocessing, one intra-op thread per process (torch.set_num_threads(1)), each process
pinned to one core (--bind core, the counterpart of mpirun --bind-to core).

With --model vgg it runs autorate's VGG preset instead (bias-free 3x3 conv, BatchNorm2d, ReLU,
32,32,M,64,64,M,128,M on 32x32x3 synthetic images, flatten, a Linear head with bias), and with
--model resnet20 autorate's ResNet-20 (a bias-free 3x3 conv 3->16 with BN and ReLU, then three stages
of three BasicBlocks with 16, 32 and 64 channels, the first block of the second and third stage with
stride 2; parameter-free "option A" shortcuts that subsample and zero-pad the channels; global
average pooling and a Linear 64->10 head with bias), both on 32x32x3 synthetic images in
channels_last, oneDNN's fast layout for CPU convolutions.

BN is plain BatchNorm1d (BatchNorm2d): per-process statistics, as `autorate --bn local` (SyncBatchNorm does not
run on CPUs). DDP's defaults are kept: 25 MiB gradient buckets (autorate's are 4 MiB) and
the BN buffers broadcast from rank 0 before each forward.

A step is zero_grad, forward, loss, backward (DDP's gradient allreduce completes inside it) and
the optimizer step. Each step's time is the slowest process's (an allreduce of MAX over the
per-step times after the run); the figure is the median over --steps timed steps after --warmup
untimed ones, and samples/s = global batch / that median (autorate bench reports the same way).
max_rss_mib is the largest peak resident memory (getrusage ru_maxrss) of the processes at the end
of their timed steps, in MiB.

Prints one JSON line per configuration on stdout:
  {"framework":"pytorch-ddp","np":2,"samples_per_s":...,"step_ms_median":...,"max_rss_mib":...,...}
and, with several --np values, the np=N/np=1 ratio on stderr (and as a JSON line with --ratio-json).
With --repeats R > 1 the configurations alternate R times and the medians over the repeats are
printed. Without PyTorch it says how to install it and exits 0 (a skip, not a failure).
"""

import argparse
import json
import os
import resource
import socket
import statistics
import sys
import tempfile

# One thread per process also for the OpenMP/MKL pools that torch creates at import.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

SKIP_MESSAGE = ("PyTorch is not installed: pip install torch --index-url "
                "https://download.pytorch.org/whl/cpu; skipping the reference")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--np", default="1,2", help="process counts, comma-separated (default 1,2)")
    p.add_argument("--model", choices=["mlp", "vgg", "resnet20"], default="mlp",
                   help="mlp (--widths), vgg (autorate's VGG preset 32,32,M,64,64,M,128,M) or resnet20 "
                        "(ResNet-20, 16/32/64 channels, option-A padding shortcuts); the conv nets run on "
                        "32x32x3 images in channels_last (oneDNN's fast layout on CPU), Linear head with bias")
    p.add_argument("--widths", default="784,1024,1024,1024,10", help="in,hidden...,classes")
    p.add_argument("--global-batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=30, help="timed steps (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--repeats", type=int, default=1, help="alternate the configurations this often")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--bind", choices=["core", "none"], default="core",
                   help="pin process r to the r-th allowed CPU (default core)")
    p.add_argument("--json", metavar="FILE", help="also append every result line to FILE")
    p.add_argument("--ratio-json", action="store_true", help="print the ratio as a JSON line too")
    args = p.parse_args(argv)
    try:
        args.np_list = [int(x) for x in args.np.split(",") if x]
        args.width_list = [int(x) for x in args.widths.split(",") if x]
    except ValueError:
        p.error("--np and --widths take comma-separated integers")
    if not args.np_list or min(args.np_list) < 1:
        p.error("--np needs process counts >= 1")
    if len(args.width_list) < 2 or min(args.width_list) < 1:
        p.error("--widths needs at least in,classes, all positive")
    if args.global_batch < max(args.np_list):
        p.error(f"--global-batch {args.global_batch} is smaller than the process count")
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1:
        p.error("--steps and --repeats must be >= 1, --warmup >= 0")
    return args


def build_model(torch, widths):
    layers = []
    for fan_in, fan_out in zip(widths[:-2], widths[1:-1]):
        layers += [torch.nn.Linear(fan_in, fan_out, bias=False),
                   torch.nn.BatchNorm1d(fan_out), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(widths[-2], widths[-1], bias=True))
    return torch.nn.Sequential(*layers)


def build_vgg(torch, layers=(32, 32, "M", 64, 64, "M", 128, "M"), classes=10, size=32):
    """autorate's `--model vgg`: bias-free 3x3 conv + BN + ReLU, 2x2 max pools, flatten, Linear head."""
    mods, channels = [], 3
    for layer in layers:
        if layer == "M":
            mods.append(torch.nn.MaxPool2d(2))
            size //= 2
        else:
            mods += [torch.nn.Conv2d(channels, layer, 3, padding=1, bias=False),
                     torch.nn.BatchNorm2d(layer), torch.nn.ReLU()]
            channels = layer
    mods += [torch.nn.Flatten(), torch.nn.Linear(channels * size * size, classes)]
    return torch.nn.Sequential(*mods).to(memory_format=torch.channels_last)


def build_resnet20(torch, widths=(16, 32, 64), blocks=3, classes=10):
    """autorate's `--model resnet20`: CIFAR ResNet-20 with parameter-free option-A shortcuts."""
    nn, F = torch.nn, torch.nn.functional

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.pad = None if stride == 1 and cin == cout else (cout - cin) // 2

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            # option A: subsample by 2 and zero-pad the channels on both sides, no parameters
            shortcut = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
            return F.relu(out + shortcut)

    mods, channels = [nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()], widths[0]
    for stage, width in enumerate(widths):
        for block in range(blocks):
            mods.append(BasicBlock(channels, width, 2 if stage > 0 and block == 0 else 1))
            channels = width
    mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes)]
    return nn.Sequential(*mods).to(memory_format=torch.channels_last)


def worker(rank, world, port, args, result_path):
    import torch
    import torch.distributed as dist

    if args.bind == "core" and hasattr(os, "sched_getaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[rank % len(cpus)]})
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set in this process
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)

    torch.manual_seed(0)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    if args.model == "vgg":
        model = build_vgg(torch)
    elif args.model == "resnet20":
        model = build_resnet20(torch)
    else:
        model = build_model(torch, args.width_list)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=args.lr)
    loss_fn = torch.nn.CrossEntropyLoss()

    # This rank's share of the global batch: contiguous, sizes differ by at most one.
    share = args.global_batch // world + (1 if rank < args.global_batch % world else 0)
    gen = torch.Generator().manual_seed(1000 + rank)
    pool = 4  # a few distinct synthetic batches, cycled
    if args.model in ("vgg", "resnet20"):
        xs = [torch.randn(share, 3, 32, 32, generator=gen).contiguous(memory_format=torch.channels_last)
              for _ in range(pool)]
        classes = 10
    else:
        xs = [torch.randn(share, args.width_list[0], generator=gen) for _ in range(pool)]
        classes = args.width_list[-1]
    ys = [torch.randint(0, classes, (share,), generator=gen) for _ in range(pool)]

    import time
    times = []
    for step in range(args.warmup + args.steps):
        x, y = xs[step % pool], ys[step % pool]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(ddp(x), y)
        loss.backward()
        opt.step()
        t1 = time.perf_counter()
        if step >= args.warmup:
            times.append(t1 - t0)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if not torch.isfinite(loss).item():
        raise RuntimeError(f"rank {rank}: the loss is not finite")

    # A step takes as long as its slowest process.
    t = torch.tensor(times, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    rss = torch.tensor([rss_mib], dtype=torch.float64)
    dist.all_reduce(rss, op=dist.ReduceOp.MAX)
    if rank == 0:
        steps_ms = sorted(v * 1e3 for v in t.tolist())
        median_ms = statistics.median(steps_ms)
        result = {
            "framework": "pytorch-ddp", "np": world,
            "samples_per_s": args.global_batch / (median_ms / 1e3),
            "step_ms_median": median_ms,
            "step_ms_min": steps_ms[0], "step_ms_max": steps_ms[-1],
            "global_batch": args.global_batch, "model": args.model,
            "widths": {"mlp": args.widths, "vgg": "32,32,M,64,64,M,128,M", "resnet20": "16,32,64"}[args.model],
            "steps": args.steps, "warmup": args.warmup, "threads": torch.get_num_threads(),
            "bind": args.bind, "torch": torch.__version__, "blas": blas_name(torch),
            "final_loss": loss.item(), "max_rss_mib": rss.item(),
        }
        with open(result_path, "w") as f:
            json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


def blas_name(torch):
    """The BLAS that torch.__config__.show() reports (MKL or a bundled OpenBLAS)."""
    cfg = torch.__config__.show()
    for token in cfg.replace(",", " ").split():
        if token.startswith("BLAS_INFO="):
            return token.split("=", 1)[1]
    return "unknown"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(torch_mp, world, args):
    with tempfile.TemporaryDirectory(prefix="ddp-reference.") as tmp:
        path = os.path.join(tmp, "result.json")
        torch_mp.spawn(worker, args=(world, free_port(), args, path), nprocs=world, join=True)
        with open(path) as f:
            return json.load(f)


def emit(line, args):
    text = json.dumps(line)
    print(text, flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(text + "\n")


def main(argv):
    args = parse_args(argv)
    try:
        import torch
        import torch.multiprocessing as torch_mp
    except ImportError:
        print(SKIP_MESSAGE, file=sys.stderr)
        return 0
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        print("this PyTorch build has no gloo backend; skipping the reference", file=sys.stderr)
        return 0

    runs = {n: [] for n in args.np_list}
    for _ in range(args.repeats):
        for n in args.np_list:
            r = run_config(torch_mp, n, args)
            runs[n].append(r)
            print(f"pytorch-ddp: np={n} {r['samples_per_s']:.0f} samples/s "
                  f"(step median {r['step_ms_median']:.2f} ms, min {r['step_ms_min']:.2f}, "
                  f"max {r['step_ms_max']:.2f}; peak RSS per process {r['max_rss_mib']:.0f} MiB)", file=sys.stderr)
    best = {}
    for n in args.np_list:
        rows = runs[n]
        line = dict(rows[0])
        line["samples_per_s"] = statistics.median(r["samples_per_s"] for r in rows)
        line["step_ms_median"] = statistics.median(r["step_ms_median"] for r in rows)
        line["step_ms_min"] = min(r["step_ms_min"] for r in rows)
        line["step_ms_max"] = max(r["step_ms_max"] for r in rows)
        line["final_loss"] = rows[-1]["final_loss"]
        line["max_rss_mib"] = max(r["max_rss_mib"] for r in rows)
        line["repeats"] = len(rows)
        best[n] = line
        emit(line, args)
    if 1 in best:
        for n in args.np_list:
            if n == 1:
                continue
            ratio = best[n]["samples_per_s"] / best[1]["samples_per_s"]
            print(f"pytorch-ddp: np={n} / np=1 = {ratio:.2f}x "
                  f"({best[n]['samples_per_s']:.0f} vs {best[1]['samples_per_s']:.0f} samples/s; "
                  f"torch {best[1]['torch']}, BLAS {best[1]['blas']}, one thread per process)",
                  file=sys.stderr)
            if args.ratio_json:
                emit({"framework": "pytorch-ddp", "ratio": f"np{n}/np1", "value": ratio}, args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
