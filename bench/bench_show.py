"""What ``tl-tunedlens show`` costs per token of text on SmolLM2-135M: page size, time and memory.

For each token count, one report page (the default statistics kl, entropy, ce; top-5 on hover) is
built for the last tokens of a Shakespeare play, each in a fresh process so that its peak resident
memory (``ru_maxrss``) is its own; the table gives the page size, the time to build it and the peak
memory above the loaded model. ``show --max-tokens`` (default 128) bounds all three.

Not a test: ``.venv/bin/python bench/bench_show.py [--tokens 32 64 128 256]`` (a few minutes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, tempfile, time
from pathlib import Path
from tl_tunedlens import TunedLens, load_model
from tl_tunedlens.data import load_documents
from tl_tunedlens.viz import write_report

n = int(sys.argv[1])
model = load_model("smollm2-135m")
lens = TunedLens.from_model(model)
text = load_documents("shakespeare")[0].text[-20 * n:]
tokens = model.to_tokens(text, truncate=False)[:, -n:]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
path = write_report(Path(tempfile.mkdtemp()) / "r.html", model, lens, tokens)
print(json.dumps({"tokens": n, "seconds": time.perf_counter() - t0, "mb": path.stat().st_size / 1e6,
                  "rss_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[32, 64, 128, 256])
    args = parser.parse_args()
    print(f"{'tokens':>6}  {'page MB':>8}  {'MB/token':>8}  {'seconds':>8}  {'peak RSS above model, MB':>24}")
    for n in args.tokens:
        out = subprocess.run([sys.executable, "-c", CHILD, str(n)], capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{n:>6}  {row['mb']:>8.1f}  {row['mb'] / n:>8.3f}  {row['seconds']:>8.1f}  {row['rss_mb']:>24.0f}")


if __name__ == "__main__":
    main()
