"""What importing the encoder costs a new process, with and without what ``centerclip`` defers.

Every encode actor, job, Ray Train worker and search replica starts by importing
``pipelines.encode`` (torch, open_clip, the model). ``import centerclip`` imports open_clip without
``torch._dynamo`` and ``timm`` (``centerclip/_deferred_imports.py``). Importing them first gives the
cost without each deferral: ``with_dynamo`` imports ``torch._dynamo`` first, ``eager`` imports
``torch._dynamo`` first and ``timm`` after (the cost of open_clip's own imports; timm after,
because ``centerclip``'s torchvision shim must run before timm imports torchvision). Each repeat
runs every variant in fresh interpreters, rotating which goes first, and counts the CPU seconds
of the imports after ``import torch`` (whose own cost is reported apart). The medians count.

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
if sys.argv[1] in ("with_dynamo", "eager"):
    import torch._dynamo
import pipelines.encode
if sys.argv[1] == "eager":
    import timm  # after: centerclip's torchvision shim must come before timm's torchvision
print(json.dumps({"torch_s": torch_s, "encoder_s": time.process_time() - began,
                  "deferred_loaded": "torch._dynamo" in sys.modules or "timm" in sys.modules}))
"""
VARIANTS = ("deferred", "with_dynamo", "eager")


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
        shift = repeat % len(VARIANTS)
        for variant in VARIANTS[shift:] + VARIANTS[:shift]:
            runs[variant].append(measure(variant))
    assert not any(r["deferred_loaded"] for r in runs["deferred"]), "a deferred module was imported"
    median = {
        variant: {
            key: statistics.median(r[key] for r in results) for key in ("torch_s", "encoder_s")
        }
        for variant, results in runs.items()
    }
    deferred = median["deferred"]["encoder_s"]
    saved = median["eager"]["encoder_s"] - deferred
    results = {
        **run_metadata(),
        "repeats": args.repeats,
        "headline": {
            "encoder_import_cpu_s": deferred,
            "encoder_import_cpu_s_with_dynamo": median["with_dynamo"]["encoder_s"],
            "encoder_import_cpu_s_eager": median["eager"]["encoder_s"],
            "saved_cpu_s_per_process": saved,
            "saved_by_deferring_dynamo_cpu_s": median["with_dynamo"]["encoder_s"] - deferred,
            "saved_by_deferring_timm_cpu_s": median["eager"]["encoder_s"]
            - median["with_dynamo"]["encoder_s"],
            "eager_over_deferred": median["eager"]["encoder_s"] / deferred,
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
    print(f"saved per process against open_clip's own imports: {saved:.2f} CPU-s; wrote {path}")


if __name__ == "__main__":
    main()
