"""Throughput of reclip at scale: 1 and 2 processes on CPU, and one GPU when there is one.

    python benchmarks/scale.py                 # CPU part (tiny model, generated images)
    python benchmarks/scale.py --gpu           # + GPU part: ViT-B/16 and ViT-L/14 (random
                                               #   init, synthetic images, bf16) and label
                                               #   propagation at N = 1,000,000, C = 1,000

Results go to benchmarks/results/scale.json (merged: a CPU run keeps earlier GPU numbers).
The CPU part runs ``reclip.ReCLIP.fit`` (zero-shot, then one ReCLIP epoch) in this script's
``--child`` mode under ``torchrun --nproc_per_node=1|2`` and reads images/s from the
metrics.json each run writes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from reclip.io import write_json

RESULTS = Path(__file__).parent / "results" / "scale.json"


def make_images(root: Path, classes: int, per_class: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
        proto = np.asarray(Image.fromarray(base).resize((size, size), Image.BILINEAR)).astype(float)
        for i in range(per_class):
            img = np.clip(proto + rng.normal(0, 40, proto.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{i:05d}.png")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_distributed(nproc: int, mode: str, data: Path, out: str, env: dict) -> float:
    """Wall seconds of ``child(mode, data, out)`` on ``nproc`` torchrun processes."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={free_port()}", __file__, "--child", mode, str(data), out]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def child(mode: str, data: str, out: str) -> None:
    """One library run on the tiny model, as one torchrun rank (rank 0 writes ``out``)."""
    import reclip
    from reclip import distributed

    device = distributed.init(None)
    try:
        model = reclip.load_model("tiny", device=device)
        dataset = reclip.load_dataset(data, transform=model.preprocess)
        config = reclip.ReclipConfig(mode=mode, epochs=1 if mode != "zero-shot" else None, workers=0, cache=False)
        reclip.ReCLIP(model, config).fit(dataset, out=out)
    finally:
        distributed.close()


def cpu_part(n: int) -> dict:
    out: dict = {"model": "tiny (2-layer ViT, 32 px)", "images": n, "threads_per_process": None}
    with tempfile.TemporaryDirectory() as tmp:
        data = make_images(Path(tmp) / "data", 10, n // 10, 32)
        for nproc in (1, 2):
            # the machine's cores are shared out between the processes
            threads = max(1, (os.cpu_count() or 2) // nproc)
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "RECLIP_CACHE": f"{tmp}/cache{nproc}",
                   "PYTHONWARNINGS": "ignore"}
            zs_wall = run_distributed(nproc, "zero-shot", data, f"{tmp}/zs{nproc}", env)
            zs = json.loads(Path(f"{tmp}/zs{nproc}/metrics.json").read_text())
            ad_wall = run_distributed(nproc, "reclip", data, f"{tmp}/ad{nproc}", env)
            ad = json.loads(Path(f"{tmp}/ad{nproc}/metrics.json").read_text())
            epoch = ad["epochs"][0]
            out[f"{nproc}_process"] = {
                "threads_per_process": threads,
                "zeroshot_images_per_s": zs["images_per_s"], "zeroshot_wall_s": round(zs_wall, 2),
                "adapt_epoch_seconds": epoch["seconds"],
                "adapt_train_images_per_s": epoch.get("train_images_per_s"),
                "decode_images_per_s": epoch.get("decode_images_per_s"),
                "adapt_wall_s": round(ad_wall, 2),
            }
            print(nproc, "process(es):", out[f"{nproc}_process"], flush=True)
    return out


def gpu_model_part(arch: str, n: int, batch: int) -> dict:
    """One ReCLIP epoch on synthetic images with a randomly initialised open_clip model."""
    import open_clip

    from reclip.features import Features
    from reclip.method.config import ReclipConfig
    from reclip.method.selftrain import adapt
    from reclip.models.open_clip_backend import OpenClipDualEncoder

    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None, device="cuda")
    dual = OpenClipDualEncoder(model, preprocess, open_clip.get_tokenizer(arch), arch, None)
    size = model.visual.image_size[0]

    class Synthetic(torch.utils.data.Dataset):
        """Pre-made pixels: measures the model, not decoding."""
        classnames = [[f"class {c}"] for c in range(100)]
        transform = None
        labels = np.arange(n) % 100

        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int):
            g = torch.Generator().manual_seed(i)
            return torch.randn(3, size, size, generator=g), i, int(self.labels[i])

    data = Synthetic()
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        feats = []
        for b in range(0, n, batch):
            x = torch.stack([data[i][0] for i in range(b, min(n, b + batch))]).cuda()
            feats.append(dual.encode_image(x).float().cpu())
    torch.cuda.synchronize()
    zs_seconds = time.perf_counter() - start
    frozen = Features(torch.cat(feats), torch.arange(n), torch.as_tensor(data.labels), [])
    config = ReclipConfig(epochs=1, batch_size=batch, workers=4)
    state, _ = adapt(dual, data, frozen, ["a photo of a {}."], config)
    epoch = state.history[0]
    return {"arch": arch, "images": n, "batch": batch, "zeroshot_images_per_s_incl_synthesis": round(n / zs_seconds, 1),
            "epoch_seconds": epoch["seconds"], "train_images_per_s": epoch.get("train_images_per_s"),
            "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def gpu_propagation_part(n: int, c: int, d: int = 768) -> dict:
    from reclip import label_propagation

    g = torch.Generator(device="cuda").manual_seed(0)
    shared = torch.nn.functional.normalize(torch.randn(d, device="cuda", generator=g), dim=0)
    own = torch.nn.functional.normalize(torch.randn(c, d, device="cuda", generator=g), dim=1)
    classes = torch.nn.functional.normalize(0.8 * shared + 0.6 * own, dim=1)
    truth = torch.randint(0, c, (n,), device="cuda", generator=g)
    x = torch.nn.functional.normalize(0.5 * shared + 0.3 * own[truth] + 0.03 * torch.randn(n, d, device="cuda", generator=g), dim=1)
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = label_propagation(x, classes, device="cuda")
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"n": n, "c": c, "d": d, "seconds": round(seconds, 2), "timings": result.timings,
            "accuracy_vs_generating_class": round((result.labels == truth.cpu()).float().mean().item(), 4),
            "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="also run the GPU part (needs CUDA)")
    p.add_argument("--skip-cpu", action="store_true")
    p.add_argument("--cpu-images", type=int, default=400)
    p.add_argument("--gpu-images", type=int, default=8192)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--child", nargs=3, metavar=("MODE", "DATA", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*args.child)
        return
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["date"] = time.strftime("%Y-%m-%d")
    if not args.skip_cpu:
        results["cpu"] = {"machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
                          **cpu_part(args.cpu_images)}
    if args.gpu:
        if not torch.cuda.is_available():
            sys.exit("--gpu: no CUDA device here")
        gpu = {"device": torch.cuda.get_device_name(0),
               "goals": {"label_propagation_1M_1000_seconds": 60, "vit_l14_train_images_per_s": 1000}}
        gpu["label_propagation"] = gpu_propagation_part(1_000_000, 1000)
        print(gpu["label_propagation"], flush=True)
        gpu["models"] = []
        for arch in ("ViT-B-16", "ViT-L-14"):
            gpu["models"].append(gpu_model_part(arch, args.gpu_images, 256))
            print(gpu["models"][-1], flush=True)
        results["gpu"] = gpu
    write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
