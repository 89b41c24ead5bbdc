"""python -m t2v_exp.tiny_bases record RUN_DIR | record-vae NAME | rescore [BASE ...] | list (a Markdown table
of the committed bases)"""

from __future__ import annotations

import argparse
import json
import sys

from . import BUNDLE_ROOT
from .record import record, record_vae, rescore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m t2v_exp.tiny_bases", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="commit a finished pretraining run as a tiny base")
    rec.add_argument("run_dir")
    vae = sub.add_parser("record-vae", help="fit a shared tiny VAE afresh and commit it")
    vae.add_argument("name", help="a shared VAE a family declares in FamilySpec.fitted_vaes, e.g. wan_vae")
    again = sub.add_parser("rescore", help="score committed bases again with today's oracle (weights untouched)")
    again.add_argument("bases", nargs="*", help="base names (default: every base with oracle scores)")
    sub.add_parser("list", help="the committed tiny bases and their oracle scores")
    args = parser.parse_args(argv)
    if args.command == "rescore":
        bases = args.bases or [p.parent.name for p in sorted(BUNDLE_ROOT.glob("*/record.json"))
                               if "oracle" in json.loads(p.read_text())]
        done: dict[str, dict] = {}
        for base in bases:
            # Bases trained together (AnimateDiff's image UNet and motion module) are one model: score once.
            model = json.loads((BUNDLE_ROOT / base / "record.json").read_text())["model"]
            if model in done:
                _copy_oracle(base, done[model])
            else:
                done[model] = rescore(base)
            scores = done[model]["scores"]
            print(f"{base}: colour {scores['color_ok']['value']:.2f}, direction {scores['direction_ok']['value']:.2f}")
        return 0
    if args.command in ("record", "record-vae"):
        written = record(args.run_dir) if args.command == "record" else [record_vae(args.name)]
        for out in written:
            print(f"Wrote {out} ({sum(p.stat().st_size for p in out.iterdir()) / 1e6:.1f} MB)")
        return 0
    print_table(json.loads(p.read_text()) for p in sorted(BUNDLE_ROOT.glob("*/record.json")))
    return 0


def _copy_oracle(base: str, oracle: dict) -> None:
    path = BUNDLE_ROOT / base / "record.json"
    saved = json.loads(path.read_text())
    if saved["oracle"] != oracle:
        saved["oracle"] = oracle
        path.write_text(json.dumps(saved, indent=2) + "\n")


def print_table(records) -> None:
    """The committed bases as a Markdown table (the README's comes from here), then the fitted VAEs."""
    def score(r, name):
        s = r["oracle"]["scores"][name]
        return f"{s['value']:.2f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}]"

    records = list(records)
    print("| base | model | steps | wall time | colour acc. [95% CI] | direction acc. [95% CI] | size | recipe |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in records:
        if "oracle" in r:
            size = sum((BUNDLE_ROOT / r["twin"] / f).stat().st_size for f in r["files"]) / 1e6
            print(f"| `{r['twin']}` | `{r.get('model', '')}` | {r['steps']} | {r['wall_time_s'] / 60:.1f} min | "
                  f"{score(r, 'color_ok')} | {score(r, 'direction_ok')} | {size:.1f} MB | `{r['recipe']}` |")
    for r in records:
        if "fit" in r:
            print(f"| `{r['twin']}` | {r['kind']} | {r['fit']['steps']} | {r['fit']['seconds'] / 60:.1f} min | "
                  f"round trip {r['fit']['psnr_db']:.1f} dB PSNR | | | `{r['recipe']}` |")

if __name__ == "__main__":
    sys.exit(main())
