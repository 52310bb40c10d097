"""Run compress.verify over the torchvision zoo (classification, segmentation, and the backbone + neck of every
detection model) or one model per timm CNN family, and write the coverage table.

Each model runs in its own subprocess (memory is returned after each one, and a
crash or timeout is recorded instead of ending the run). Results are appended
to a JSON-lines file as they finish, so an interrupted run resumes where it
stopped. Usage:

    python tools/zoo_coverage.py --out docs/zoo_coverage.jsonl --table docs/zoo_coverage.md
    python tools/zoo_coverage.py --zoo timm        # docs/zoo_coverage_timm.jsonl / .md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from compress.io import save_text

# Left out: the largest model, whose random init, deep copies and ONNX export
# take minutes and several GB each on this 2-core machine.
SKIP = {"vit_h_14": "632M parameters"}

# One model per timm CNN family, hybrids (convolution + attention) included, the smallest variant of each;
# random init, num_classes=10, 64x64 input (96 for the inception family, see compress.verify.TIMM_ZOO_INPUTS).
# Left out: pure vision transformers (vit, deit, beit, eva, cait, xcit, swin, pvt, twins, crossvit, coat, tnt,
# volo, mvitv2, hiera, ... : patch embeddings and position tables fixed to 224 inputs, and not CNNs), models
# whose attention needs a fixed feature size of 224/256 (botnet/halonet/lambda byoanet, coatnet/maxvit, levit,
# efficientformer, efficientvit_msra, tiny_vit, gcvit, davit, nextvit, swiftformer), RNN-based sequencer2d, and
# the largest ones (nasnetalarge, pnasnet5large, convmixer_768_32, mobilenetv5: minutes and GBs per model on
# this 2-core machine).
TIMM_FAMILIES: dict[str, str] = {  # family -> model
    "resnet": "resnet18", "resnet-d": "resnet18d", "resnet-t": "resnet26t", "seresnet": "seresnet18",
    "ecaresnet": "ecaresnet26t", "resnext": "resnext26ts", "resnetblur": "resnetblur18", "resnetrs": "resnetrs50",
    "res2net": "res2net50_14w_8s", "res2next": "res2next50", "resnest": "resnest14d", "sknet": "skresnet18",
    "legacy_senet": "legacy_seresnet18", "resnetv2": "resnetv2_18", "resnetv2_bit": "resnetv2_50x1_bit",
    "wide_resnet": "wide_resnet50_2", "densenet": "densenet121", "dla": "dla34", "dpn": "dpn48b",
    "vgg": "vgg11_bn", "efficientnet": "efficientnet_b0", "efficientnet_gn": "efficientnet_b0_gn",
    "tf_efficientnet": "tf_efficientnet_b0", "efficientnetv2": "efficientnetv2_rw_t",
    "tf_efficientnetv2": "tf_efficientnetv2_b0", "mixnet": "mixnet_s", "mnasnet": "mnasnet_small",
    "spnasnet": "spnasnet_100", "fbnet": "fbnetc_100", "fbnetv3": "fbnetv3_b", "tinynet": "tinynet_e",
    "mobilenetv2": "mobilenetv2_050", "mobilenetv3": "mobilenetv3_small_050", "mobilenetv4": "mobilenetv4_conv_small",
    "lcnet": "lcnet_035", "hardcorenas": "hardcorenas_a", "ghostnet": "ghostnet_050", "ghostnetv2": "ghostnetv2_100",
    "repghost": "repghostnet_050", "rexnet": "rexnet_100", "regnetx": "regnetx_002", "regnety": "regnety_002",
    "regnetz": "regnetz_b16", "cspresnet": "cspresnet50", "cspdarknet": "cs3darknet_s", "darknet": "darknet17",
    "cspnext": "cspnext_tiny", "vovnet": "ese_vovnet19b_dw", "hrnet": "hrnet_w18_small", "selecsls": "selecsls42",
    "tresnet": "tresnet_m", "xception": "legacy_xception", "xception_aligned": "xception41",
    "inception_v3": "inception_v3", "inception_v4": "inception_v4", "inception_resnet_v2": "inception_resnet_v2",
    "repvgg": "repvgg_a0", "gernet": "gernet_s", "gcresnet": "gcresnet33ts", "eca_resnext": "eca_resnext26ts",
    "mobileone": "mobileone_s0", "nf_resnet": "nf_resnet26", "nf_regnet": "nf_regnet_b0", "nfnet": "dm_nfnet_f0",
    "convnext": "convnext_atto", "convnextv2": "convnextv2_atto", "inception_next": "inception_next_atto",
    "rdnet": "rdnet_tiny", "hgnet": "hgnet_tiny", "hgnetv2": "hgnetv2_b0", "starnet": "starnet_s1",
    "fasternet": "fasternet_t0", "repvit": "repvit_m0_9", "mambaout": "mambaout_femto",
    "poolformer": "poolformer_s12", "convformer": "convformer_s18", "visformer": "visformer_tiny",
    "edgenext": "edgenext_xx_small", "mobilevit": "mobilevit_xxs", "mobilevitv2": "mobilevitv2_050",
    "fastvit": "fastvit_t8", "efficientvit_mit": "efficientvit_b0", "focalnet": "focalnet_tiny_srf",
}

_CHILD = """
import json, sys, torch
torch.set_num_threads(1)
from compress.verify import verify_model, zoo_model, timm_zoo_model
model, x = (timm_zoo_model if sys.argv[2] == "timm" else zoo_model)(sys.argv[1])
rep = verify_model(model, x)
print("RESULT " + json.dumps(rep.to_dict()))
"""


# Detection models: compress.verify.zoo_model gives their backbone + neck (model.backbone, feature maps out); the
# full detector is refused by name (UnsupportedModelError: its box post-processing cannot be traced).
DETECTION_NOTE = "backbone + neck (model.backbone); the full detector is refused: UnsupportedModelError"


def detection_names(torchvision) -> list[str]:
    """The torchvision detection models (their rows verify ``model.backbone``)."""
    return torchvision.models.list_models(module=torchvision.models.detection)


def zoo_names(torchvision) -> list[str]:
    """The torchvision table: every classification and segmentation model, then every detection model."""
    return (torchvision.models.list_models(module=torchvision.models)
            + torchvision.models.list_models(module=torchvision.models.segmentation)
            + detection_names(torchvision))


def run_one(name: str, timeout_s: int, zoo: str = "torchvision") -> dict:
    start = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, name, zoo], capture_output=True, text=True,
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

    names = zoo_names(torchvision)
    detection = set(detection_names(torchvision))
    ok = [n for n in names if results.get(n, {}).get("ok")]
    tested = [n for n in names if n in results and n not in SKIP]
    lines = [
        "# Zoo coverage",
        "",
        "Produced by `python tools/zoo_coverage.py` (random init; input 64x64 except inception_v3 96, maxvit_t 224,",
        "vit_* 64 with image_size=64). For each model: the channel space builds; at max, min and 3 random configs",
        "the extracted subnet equals the in-place slimmed network (<= 1e-5 x output scale), at max config it equals",
        "the original model, the analytic FLOPs equal fvcore's count of the extracted subnet exactly, and the ONNX",
        "export of the min and one random subnet matches onnxruntime; reordering the channels by importance keeps",
        "the full-width output (within 1e-4 of its scale). Detection models: the row checks their",
        "backbone + neck (`model.backbone`, feature maps out, ssd300_vgg16 at 300x300); the full detector is refused",
        "by name (`UnsupportedModelError`: its box post-processing cannot be traced by torch.fx).",
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
        if n in detection:
            note = f"{DETECTION_NOTE}{'; ' + note if note else ''}"
        lines.append(
            f"| {n} | {'yes' if r.get('ok') else 'NO'} | {r.get('groups', '')} | {r.get('frozen_groups', '')} | "
            f"{r.get('flops_full', '')} | {r.get('flops_min', '')} | {r.get('max_sub_vs_dynamic', 0):.1e} | "
            f"{r.get('onnx_max_abs_diff', 0):.1e} | {r.get('seconds', '')} | {note} |")
    save_text("\n".join(lines) + "\n", path)


def write_timm_table(results: dict[str, dict], path: Path) -> None:
    """The timm table: one row per family, headed by how many verify and how many slim >= 0.7 of their FLOPs."""
    rows = [(fam, model, results.get(model)) for fam, model in TIMM_FAMILIES.items()]
    tested = [r for _, _, r in rows if r is not None]
    ok = [r for r in tested if r.get("ok")]
    slim = [r for r in ok if r.get("slimmable_share", 0.0) >= 0.7]
    lines = [
        "# Zoo coverage: timm",
        "",
        "Produced by `python tools/zoo_coverage.py --zoo timm`: one model per timm CNN family (hybrids included;",
        "the families left out and why are listed in the tool), random init, num_classes=10, input 64x64 (96 for",
        "the inception family). Same checks as docs/zoo_coverage.md: the space builds; the max config equals the",
        "original; at max, min and 3 random configs the extracted subnet equals the in-place network and the",
        "analytic FLOPs equal fvcore's count; the ONNX export matches onnxruntime; reordering the channels by",
        "importance keeps the full-width output (within 1e-4 of its scale: float32 summation order). Models",
        "whose forward branches on shapes are traced at the example's shapes (guards check them at run time); a",
        "submodule torch.fx cannot trace is kept whole (its channels frozen, the reason in the note).",
        "*Slimmable share* is 1 - FLOPs(smallest config) / FLOPs(full): the part of the cost the channel space",
        "can remove.",
        "",
        f"**{len(ok)} of {len(tested)} families verify** ({100 * len(ok) / max(1, len(tested)):.0f}%); "
        f"**{len(slim)} verify with a slimmable share >= 0.7**; {len(rows) - len(tested)} not run.",
        "",
        "| family | model | ok | slimmable share | slimmable groups | frozen groups | FLOPs full | FLOPs min | "
        "max\\|sub-dyn\\| | onnx max diff | s | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for fam, model, r in rows:
        if r is None:
            lines.append(f"| {fam} | {model} | not run | | | | | | | | | |")
            continue
        note = r.get("error") or "; ".join(r.get("unknown_ops", [])[:1])
        note = (note or "").replace("|", "/").replace("\n", " ")[:200]
        lines.append(
            f"| {fam} | {model} | {'yes' if r.get('ok') else 'NO'} | {r.get('slimmable_share', 0.0):.3f} | "
            f"{r.get('groups', '')} | {r.get('frozen_groups', '')} | {r.get('flops_full', '')} | "
            f"{r.get('flops_min', '')} | {r.get('max_sub_vs_dynamic', 0):.1e} | {r.get('onnx_max_abs_diff', 0):.1e} | "
            f"{r.get('seconds', '')} | {note} |")
    save_text("\n".join(lines) + "\n", path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", choices=("torchvision", "timm"), default="torchvision")
    ap.add_argument("--out", default=None, help="JSON lines (default docs/zoo_coverage[_timm].jsonl)")
    ap.add_argument("--table", default=None, help="markdown table (default docs/zoo_coverage[_timm].md)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per model")
    ap.add_argument("--models", nargs="*", help="only these models")
    ap.add_argument("--include-large", action="store_true", help="also run the models left out for size")
    args = ap.parse_args()
    suffix = "_timm" if args.zoo == "timm" else ""
    args.out = args.out or f"docs/zoo_coverage{suffix}.jsonl"
    args.table = args.table or f"docs/zoo_coverage{suffix}.md"
    out = Path(args.out)
    results: dict[str, dict] = {}
    if out.exists():
        for line in out.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                results[rec["model"]] = rec
    if args.zoo == "timm":
        names = args.models or list(TIMM_FAMILIES.values())
    else:
        import torchvision

        names = args.models or zoo_names(torchvision)
    todo = [n for n in names if n not in results and (args.include_large or n not in SKIP)]
    print(f"{len(results)} done, {len(todo)} to run", flush=True)
    for i, name in enumerate(todo, 1):
        rec = {"model": name, **run_one(name, args.timeout, args.zoo)}
        with out.open("a") as f:  # one line per finished model: an interrupted run loses nothing finished
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        results[name] = rec
        print(f"[{i}/{len(todo)}] {name}: {'ok' if rec['ok'] else rec['error']} ({rec.get('seconds')} s)", flush=True)
    (write_timm_table if args.zoo == "timm" else write_table)(results, Path(args.table))
    print(f"table written to {args.table}")


if __name__ == "__main__":
    main()
