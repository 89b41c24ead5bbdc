"""python -m t2v_exp.tiny_bases record RUN_DIR   |   python -m t2v_exp.tiny_bases list"""

from __future__ import annotations

import argparse
import json
import sys

from . import BUNDLE_ROOT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m t2v_exp.tiny_bases", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="commit a finished pretraining run as a tiny base")
    rec.add_argument("run_dir")
    vae = sub.add_parser("record-vae", help="fit a shared tiny VAE afresh and commit it")
    vae.add_argument("name", help="image_vae | cogvideox_vae | wan_vae | ltx_vae")
    sub.add_parser("list", help="the committed tiny bases and their oracle scores")
    args = parser.parse_args(argv)
    if args.command in ("record", "record-vae"):
        from .record import record, record_vae

        written = record(args.run_dir) if args.command == "record" else [record_vae(args.name)]
        for out in written:
            print(f"Wrote {out} ({sum(p.stat().st_size for p in out.iterdir()) / 1e6:.1f} MB)")
        return 0
    for path in sorted(BUNDLE_ROOT.glob("*/record.json")):
        r = json.loads(path.read_text())
        if "oracle" not in r:
            print(f"{r['twin']:<16} {r['kind']}: {r['fit']['psnr_db']:.1f} dB round trip ({r['recipe']})")
            continue
        scores = r["oracle"]["scores"]
        print(f"{r['twin']:<16} {r['steps']:>6} steps  color {scores['color_ok']['value']:.2f}  "
              f"direction {scores['direction_ok']['value']:.2f}  ({r['recipe']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
