"""Training on a dataset larger than it would be in memory as float32, with bounded RSS.

    python benchmarks/large_data.py [--rows 200000] [--size 32] [--steps 300] [--dir /tmp/fastmmgan-large]

Writes a synthetic folder of ``--rows`` colour PNG images (a coloured square or disc on a dark background at a
random place) with a caption naming shape, colour and place in ``metadata.jsonl``, then runs
``python -m fastmmgan.train --data DIR`` twice in fresh processes: the first prepares the cache (decoding every
file) and trains ``--steps`` steps, the second reuses the cache and trains again. For each it reports wall
time, preparation time and files/s, and peak RSS (``ru_maxrss`` of the child). As float32 the images alone
take rows x size^2 x 3 x 4 bytes (2.46 GB at the defaults); the cache holds them as uint8 (614 MB), and
training reads batches from its memory map.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 235), "yellow": (230, 215, 40)}
SHAPES = ("square", "disc")


def write_folder(folder: Path, rows: int, size: int, seed: int = 0) -> float:
    """The synthetic dataset in the imagefolder layout; returns the seconds it took."""
    t0 = time.perf_counter()
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    with open(folder / "metadata.jsonl.tmp", "w") as meta:
        for i in range(rows):
            colour, shape = names[rng.integers(len(names))], SHAPES[rng.integers(2)]
            r = int(rng.integers(size // 8, size // 4))
            cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
            img = Image.new("RGB", (size, size), (15, 15, 20))
            box = (cx - r, cy - r, cx + r, cy + r)
            (ImageDraw.Draw(img).rectangle if shape == "square" else ImageDraw.Draw(img).ellipse)(box, fill=COLOURS[colour])
            sub = f"images/{i // 10000:03d}"
            (folder / sub).mkdir(exist_ok=True)
            img.save(folder / sub / f"{i:06d}.png", compress_level=1)
            side = "left" if cx < size // 2 else "right"
            meta.write(json.dumps({"file_name": f"{sub}/{i:06d}.png", "caption": f"a {colour} {shape} on the {side}"}) + "\n")
            if i % 20000 == 0:
                print(f"  written {i} of {rows} images", file=sys.stderr)
    (folder / "metadata.jsonl.tmp").rename(folder / "metadata.jsonl")
    return time.perf_counter() - t0


def train_once(folder: Path, out: Path, steps: int, cache: Path) -> dict[str, object]:
    """One training process on the folder: wall seconds, its peak RSS and what it logged about the data."""
    cmd = [sys.executable, "-m", "fastmmgan.train", "--data", str(folder), "--steps", str(steps), "--out", str(out),
           "--cache-dir", str(cache), "--sample-every", "0", "--ckpt-every", "0", "--no-progress", "--log-every", "50"]
    shutil.rmtree(out, ignore_errors=True)  # its metrics.jsonl would hold an earlier run's lines
    # A fresh parent per run: RUSAGE_CHILDREN's peak covers that run alone.
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); subprocess.run(sys.argv[1:], check=True); "
               "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out_line = subprocess.run([sys.executable, "-c", wrapper, *cmd], check=True, capture_output=True, text=True).stdout
    wall, peak_kib = (float(v) for v in out_line.split()[-2:])
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    data = next(e for e in events if e.get("event") == "data")
    rates = [e["steps_per_s"] for e in events if "steps_per_s" in e]
    return {"wall_s": round(wall, 1), "peak_rss_mib": round(peak_kib / 1024, 1), "reused": data["reused"],
            "files_per_s": data.get("files_per_s"), "decode_s": data.get("decode_seconds"),
            "steps_per_s": round(rates[-1], 1) if rates else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--dir", default="/tmp/fastmmgan-large")
    args = p.parse_args()
    root = Path(args.dir)
    folder = root / f"data-{args.rows}-{args.size}"
    if not (folder / "metadata.jsonl").is_file():
        print(f"writing {args.rows} images into {folder}", file=sys.stderr)
        print(f"written in {write_folder(folder, args.rows, args.size):.1f} s", file=sys.stderr)
    float32_gb = args.rows * args.size * args.size * 3 * 4 / 1e9
    cache = root / "cache"
    first = train_once(folder, root / "run-first", args.steps, cache)
    second = train_once(folder, root / "run-cached", args.steps, cache)
    print(f"rows {args.rows}, {args.size}x{args.size} RGB: {float32_gb:.2f} GB as float32, "
          f"{float32_gb / 4:.2f} GB as uint8 in the cache")
    for name, r in (("first run (prepares)", first), ("second run (cache)", second)):
        print(f"{name}: {json.dumps(r)}")


if __name__ == "__main__":
    main()
