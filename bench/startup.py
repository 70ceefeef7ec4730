"""What importing the encoder costs a new process, with and without torch's compiler.

Every encode actor, job, Ray Train worker and search replica starts by importing
``pipelines.encode`` (torch, open_clip, the model). ``import centerclip`` keeps ``torch._dynamo``
unimported (``centerclip/_deferred_dynamo.py``); importing ``torch._dynamo`` first, as open_clip's
own imports did before, gives the cost without that. Each repeat runs both in fresh interpreters,
alternating which goes first, and counts the CPU seconds of the imports after ``import torch``
(whose own cost is reported apart). The medians count.

    python -m bench.startup               # 5 repeats (~1 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from bench._common import REPO_ROOT, print_table, run_metadata, write_results

PROBE = """
import json, sys, time
began = time.process_time()
import torch
torch_s = time.process_time() - began
began = time.process_time()
if sys.argv[1] == "with_dynamo":
    import torch._dynamo
import pipelines.encode
print(json.dumps({"torch_s": torch_s, "encoder_s": time.process_time() - began,
                  "dynamo_loaded": "torch._dynamo" in sys.modules}))
"""
VARIANTS = ("deferred", "with_dynamo")


def measure(variant: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, variant], cwd=REPO_ROOT, check=True,
        capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per variant")
    args = parser.parse_args()

    runs: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    for repeat in range(args.repeats):
        order = VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            runs[variant].append(measure(variant))
    assert not any(r["dynamo_loaded"] for r in runs["deferred"]), "torch._dynamo was imported"
    median = {
        variant: {
            key: statistics.median(r[key] for r in results) for key in ("torch_s", "encoder_s")
        }
        for variant, results in runs.items()
    }
    saved = median["with_dynamo"]["encoder_s"] - median["deferred"]["encoder_s"]
    results = {
        **run_metadata(),
        "repeats": args.repeats,
        "headline": {
            "encoder_import_cpu_s": median["deferred"]["encoder_s"],
            "encoder_import_cpu_s_with_dynamo": median["with_dynamo"]["encoder_s"],
            "saved_cpu_s_per_process": saved,
            "with_dynamo_over_deferred": median["with_dynamo"]["encoder_s"]
            / median["deferred"]["encoder_s"],
        },
        "median": median,
        "runs": runs,
    }
    path = write_results("startup", results)
    print_table(
        [[variant, m["torch_s"], m["encoder_s"]] for variant, m in median.items()],
        ["variant", "import torch, CPU s", "then pipelines.encode, CPU s"],
        title=f"median of {args.repeats} fresh processes each",
    )
    print(f"saved per process: {saved:.2f} CPU-s; wrote {path}")


if __name__ == "__main__":
    main()
