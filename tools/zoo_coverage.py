"""Run compress.verify over the torchvision classification zoo and write the coverage table.

Each model runs in its own subprocess (memory is returned after each one, and a
crash or timeout is recorded instead of ending the run). Results are appended
to a JSON-lines file as they finish, so an interrupted run resumes where it
stopped. Usage:

    python tools/zoo_coverage.py --out docs/zoo_coverage.jsonl --table docs/zoo_coverage.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# Left out: the largest model, whose random init, deep copies and ONNX export
# take minutes and several GB each on this 2-core machine.
SKIP = {"vit_h_14": "632M parameters"}

_CHILD = """
import json, sys, torch
torch.set_num_threads(1)
from compress.verify import verify_model, zoo_model
model, x = zoo_model(sys.argv[1])
rep = verify_model(model, x)
print("RESULT " + json.dumps(rep.to_dict()))
"""


def run_one(name: str, timeout_s: int) -> dict:
    start = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, name], capture_output=True, text=True,
                              timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timeout after {timeout_s} s", "seconds": timeout_s}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
    return {"ok": False, "error": f"crashed (exit {proc.returncode}): {tail[0][:300]}",
            "seconds": round(time.perf_counter() - start, 1)}


def write_table(results: dict[str, dict], path: Path) -> None:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    ok = [n for n in names if results.get(n, {}).get("ok")]
    tested = [n for n in names if n in results and n not in SKIP]
    lines = [
        "# Zoo coverage",
        "",
        "Produced by `python tools/zoo_coverage.py` (random init; input 64x64 except inception_v3 96, maxvit_t 224,",
        "vit_* 64 with image_size=64). For each model: the channel space builds; at max, min and 3 random configs",
        "the extracted subnet equals the in-place slimmed network (<= 1e-5 x output scale), at max config it equals",
        "the original model, the analytic FLOPs equal fvcore's count of the extracted subnet exactly, and the ONNX",
        "export of the min and one random subnet matches onnxruntime.",
        "",
        f"**{len(ok)} of {len(tested)} tested models pass** ({100 * len(ok) / max(1, len(tested)):.0f}%); "
        f"{len(SKIP)} of {len(names)} left out for size: "
        + ", ".join(f"{k} ({v})" for k, v in SKIP.items()) + ".",
        "",
        "| model | ok | slimmable groups | frozen groups | FLOPs full | FLOPs min | max\\|sub-dyn\\| | onnx max diff | s | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        if n in SKIP:
            lines.append(f"| {n} | skipped | | | | | | | | {SKIP[n]} |")
            continue
        r = results.get(n)
        if r is None:
            lines.append(f"| {n} | not run | | | | | | | | |")
            continue
        note = r.get("error") or "; ".join(r.get("unknown_ops", [])[:1])
        note = (note or "").replace("|", "/")[:160]
        lines.append(
            f"| {n} | {'yes' if r.get('ok') else 'NO'} | {r.get('groups', '')} | {r.get('frozen_groups', '')} | "
            f"{r.get('flops_full', '')} | {r.get('flops_min', '')} | {r.get('max_sub_vs_dynamic', 0):.1e} | "
            f"{r.get('onnx_max_abs_diff', 0):.1e} | {r.get('seconds', '')} | {note} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/zoo_coverage.jsonl")
    ap.add_argument("--table", default="docs/zoo_coverage.md")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per model")
    ap.add_argument("--models", nargs="*", help="only these models")
    ap.add_argument("--include-large", action="store_true", help="also run the models left out for size")
    args = ap.parse_args()
    import torchvision

    out = Path(args.out)
    results: dict[str, dict] = {}
    if out.exists():
        for line in out.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                results[rec["model"]] = rec
    names = args.models or torchvision.models.list_models(module=torchvision.models)
    todo = [n for n in names if n not in results and (args.include_large or n not in SKIP)]
    print(f"{len(results)} done, {len(todo)} to run", flush=True)
    for i, name in enumerate(todo, 1):
        rec = {"model": name, **run_one(name, args.timeout)}
        with out.open("a") as f:  # one line per finished model: an interrupted run loses nothing finished
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        results[name] = rec
        print(f"[{i}/{len(todo)}] {name}: {'ok' if rec['ok'] else rec['error']} ({rec.get('seconds')} s)", flush=True)
    write_table(results, Path(args.table))
    print(f"table written to {args.table}")


if __name__ == "__main__":
    main()
