"""Replay fuzz corpora through their targets on the coverage build (`make
fuzz-coverage`: clang source-based coverage, no sanitizers) and report, per
fastpath function the targets are for, how many of its code regions ran and
how many branch directions were taken:

    coverage.py --corpus DIR [--corpus DIR ...] --out FILE

Each DIR holds one subdirectory per target (tests/fuzz/corpus, build/fuzz/corpus).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

# The C functions behind each target (Cython names them __pyx_f_8fastpath_<module>_<name>).
FUNCTIONS = {
    "frame": ["5frame_parse_eth", "5frame_parse_vnet", "5frame_complete_csum"],
    "gso": ["3gso_gso_segment"],
    "gro": ["3gro_gro_candidate", "3gro_gro_start", "3gro_gro_append", "3gro_gro_pair", "3gro_gro_finish"],
    "decide": ["8datapath_decide", "8datapath_learn_peek", "8datapath_forward_frame", "8datapath_forward_batch",
               "8datapath_deliver", "8datapath_out_port", "8datapath_out_plain", "8datapath_out_flood",
               "8datapath_out_tunnel", "8datapath_gro_take", "8datapath_gro_flush", "8datapath_tun_encap",
               "8datapath_tun_send_gso", "8datapath_tun_queue", "8datapath_tun_flush",
               "8mactable_mt_learn", "8mactable_mt_lookup"],
    "vxlan": ["8datapath_tun_check", "8datapath_tun_decap", "8datapath_tun_verdict", "5vxlan_flow_hash"],
}


def replay(dirs: list[str], profdir: str) -> int:
    import targets
    n = 0
    for d in dirs:
        for name, fn in targets.TARGETS.items():
            for path in sorted(glob.glob(os.path.join(d, name, "*"))):
                fn(open(path, "rb").read())
                n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", action="append", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--profdir", default=os.path.join(ROOT, "build", "coverage"))
    args = ap.parse_args()
    if "LLVM_PROFILE_FILE" not in os.environ:
        # Re-run with the profile going to profdir: each extension writes its own.
        os.makedirs(args.profdir, exist_ok=True)
        for f in glob.glob(os.path.join(args.profdir, "*.profraw")):
            os.remove(f)
        env = dict(os.environ, LLVM_PROFILE_FILE=os.path.join(args.profdir, "%m-%p.profraw"))
        subprocess.check_call([sys.executable] + sys.argv, env=env)
        report(args)
        return
    print(f"replayed {replay(args.corpus, args.profdir)} inputs")


def report(args: argparse.Namespace) -> None:
    prof = os.path.join(args.profdir, "merged.profdata")
    subprocess.check_call(["llvm-profdata-14", "merge", "-sparse", "-o", prof]
                          + glob.glob(os.path.join(args.profdir, "*.profraw")))
    sos = sorted(glob.glob(os.path.join(ROOT, "fastpath", "*.so")))
    cmd = ["llvm-cov-14", "export", "-summary-only=false", f"-instr-profile={prof}", sos[0]]
    for so in sos[1:]:
        cmd += ["-object", so]
    data = json.loads(subprocess.check_output(cmd))
    funcs = {}
    for f in data["data"][0]["functions"]:
        funcs.setdefault(f["name"].split(":")[-1], f)  # a static function is "file.c:name"
    lines = ["| target | function | code regions run | branch directions taken |", "|---|---|---|---|"]
    for target, names in FUNCTIONS.items():
        for short in names:
            full = "__pyx_f_8fastpath_" + short
            f = funcs.get(full)
            if f is None:
                lines.append(f"| {target} | `{short.lstrip('0123456789')}` | not found | |")
                continue
            regions = [r for r in f["regions"] if r[7] == 0]  # code regions (not skipped or expansion)
            br = f.get("branches", [])
            taken = sum((b[4] > 0) + (b[5] > 0) for b in br)
            lines.append(f"| {target} | `{short.lstrip('0123456789').split('_', 1)[1]}` | "
                         f"{sum(r[4] > 0 for r in regions)}/{len(regions)} | {taken}/{2 * len(br)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "w") as out:
        out.write(text)


if __name__ == "__main__":
    main()
