"""Token store formats side by side: numpy ``.npy`` memory map (chosen) vs the ``datasets`` Arrow cache.

    python bench/bench_store.py [--rows 8192] [--seq-len 1024] [--batch 64] [--steps 200]

Writes the same random ``[rows, seq_len]`` token ids (uint16, as a <=65536 vocabulary gets) both ways,
then reads what training steps read: ``--batch`` random rows per step, as an int64 torch tensor
(:class:`~tl_tunedlens.data.store.StoredSequences` for ``.npy``; ``load_from_disk`` +
``with_format("numpy")`` for Arrow). Prints write time, size on disk, open time and rows/s. The files
are read back through the page cache (just written), as a second epoch would; both formats are memory
maps, so a cold disk costs them the same bytes. Needs ``datasets`` for the Arrow column (skipped without it).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()

    from tl_tunedlens.data.store import StoredSequences

    ids = np.random.default_rng(0).integers(0, 49152, (args.rows, args.seq_len), dtype=np.uint16)
    picks = [np.random.default_rng(s).choice(args.rows, args.batch, replace=False).tolist() for s in range(args.steps)]
    root = Path(tempfile.mkdtemp(prefix="bench-store-"))
    rows = []
    try:
        t0 = time.perf_counter()
        np.save(root / "tokens.npy", ids)
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        seqs = StoredSequences(np.load(root / "tokens.npy", mmap_mode="r"))
        open_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for idx in picks:
            batch = seqs[idx]
        read_s = time.perf_counter() - t0
        assert torch.equal(batch, torch.from_numpy(ids[picks[-1]].astype(np.int64)))
        rows.append(("numpy .npy memory map", write_s, _size(root / "tokens.npy"), open_s, read_s))
        try:
            import datasets
        except ImportError:
            print("datasets is not installed: the Arrow column is skipped")
        else:
            datasets.disable_progress_bars()
            t0 = time.perf_counter()
            datasets.Dataset.from_dict({"input_ids": ids}).save_to_disk(str(root / "arrow"))
            write_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            ds = datasets.load_from_disk(str(root / "arrow")).with_format("numpy")
            open_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for idx in picks:
                batch = torch.from_numpy(np.asarray(ds[idx]["input_ids"], dtype=np.int64))
            read_s = time.perf_counter() - t0
            assert torch.equal(batch, torch.from_numpy(ids[picks[-1]].astype(np.int64)))
            rows.append((f"datasets {datasets.__version__} Arrow", write_s, _size(root / "arrow"), open_s, read_s))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    n = args.steps * args.batch
    print(f"{args.rows} x {args.seq_len} token ids (uint16), {args.steps} reads of {args.batch} random rows\n")
    print("| store | write s | size MiB | open s | random rows/s | vs npy |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, write_s, size, open_s, read_s in rows:
        print(f"| {name} | {write_s:.2f} | {size / 2**20:.1f} | {open_s:.3f} | {n / read_s:,.0f} | "
              f"{rows[0][4] / read_s:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
