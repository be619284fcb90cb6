"""Where a world backbone's clause check fails on the reward test pairs (a diagnosis for SpatialScore).

    python benchmarks/clause_errors.py --model DIR|asset:NAME --data PAIRS [--n 500] [--threads 2] [--json]

For each single-flip test pair (one relation of the prompt flipped, the rejected image laid out for
the flipped prompt) it asks the backbone zero-shot the changed relation as a plain yes/no question
(``world.text.relation_text``, as ``reward/zeroshot.py`` asks clauses) on both images and prints:

* per relation kind, how often the chosen image gets the higher log-odds (the pair decided by that
  clause alone) and the yes/no accuracy on each image (chosen: true, rejected: false);
* the same by how clearly the relation holds in the chosen image (its oracle margin, the geometry's
  units; the layout solver draws at 1);
* how often the whole pair (the zero-shot mean log-odds over all clauses) is right when the flipped
  clause alone is right and when it is wrong -- the share of errors that other clauses cause.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

import numpy as np


def load_flips(data: str, n: int) -> list[dict]:
    """The first ``n`` test pairs whose one perturbation is a flip, with their scenes and images."""
    from spatialt2i.data.schema import iter_rows
    from spatialt2i.reward.collate import decode_pair
    from spatialt2i.world.scene import Scene

    out = []
    for row in iter_rows(data, "test"):
        if row["n_perturbations"] != 1 or row["perturbation_kind"] != "flip":
            continue
        prompt, chosen, rejected = decode_pair(row)
        a, b = Scene.from_json(row["scene"]), Scene.from_json(row["perturbed_scene"])
        idx = [i for i, (r, s) in enumerate(zip(a.relations, b.relations)) if r != s]
        if len(idx) != 1:
            continue
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "scene": a, "rel": idx[0]})
        if len(out) >= n:
            break
    if not out:
        raise SystemExit(f"--data {data}: no single-flip pairs in the test split")
    return out


def bucket(m: float | None) -> str:
    if m is None:
        return "missing"
    for hi, name in ((0.0, "<0 (fails)"), (1.0, "0-1"), (2.0, "1-2"), (4.0, "2-4"), (8.0, "4-8")):
        if m < hi:
            return name
    return ">=8"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="asset:world-vlm-small")
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from spatialt2i.reward.pretrain import load_backbone
    from spatialt2i.reward.train_config import resolve_asset
    from spatialt2i.reward.zeroshot import yesno_scores
    from spatialt2i.world.oracle import relation_margins
    from spatialt2i.world.text import relation_text

    torch.set_num_threads(args.threads)
    model, tok, ip = load_backbone(resolve_asset(args.model))
    model.eval()
    pairs = load_flips(args.data, args.n)
    clauses = [relation_text(p["scene"], p["scene"].relations[p["rel"]]) for p in pairs]
    lo_c = yesno_scores(model, tok, ip, clauses, [p["chosen"] for p in pairs]).numpy()
    lo_r = yesno_scores(model, tok, ip, clauses, [p["rejected"] for p in pairs]).numpy()
    whole_c = yesno_scores(model, tok, ip, [p["prompt"] for p in pairs], [p["chosen"] for p in pairs]).numpy()
    whole_r = yesno_scores(model, tok, ip, [p["prompt"] for p in pairs], [p["rejected"] for p in pairs]).numpy()
    margin = [relation_margins(p["scene"], p["chosen"])[p["rel"]] for p in pairs]

    def table(keys: list[str]) -> dict[str, dict[str, float]]:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, k in enumerate(keys):
            groups[k].append(i)
        rows = {}
        for k in sorted(groups, key=lambda k: -len(groups[k])):
            ix = np.array(groups[k])
            rows[k] = {"n": len(ix), "clause_pair": float((lo_c[ix] > lo_r[ix]).mean()),
                       "yes_on_chosen": float((lo_c[ix] > 0).mean()), "no_on_rejected": float((lo_r[ix] < 0).mean()),
                       "whole_pair": float((whole_c[ix] > whole_r[ix]).mean())}
        return rows

    clause_ok = lo_c > lo_r
    whole_ok = whole_c > whole_r
    res = {
        "model": args.model, "pairs": len(pairs),
        "by_kind": table([p["scene"].relations[p["rel"]].kind for p in pairs]),
        "by_chosen_margin": table([bucket(m) for m in margin]),
        "whole_pair": float(whole_ok.mean()), "clause_pair": float(clause_ok.mean()),
        "whole_when_clause_right": float(whole_ok[clause_ok].mean()) if clause_ok.any() else None,
        "whole_when_clause_wrong": float(whole_ok[~clause_ok].mean()) if (~clause_ok).any() else None,
    }
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"{args.model}: {len(pairs)} single-flip test pairs of {args.data}")
    print(f"pair right by the flipped clause alone {res['clause_pair']:.3f}; by the whole prompt "
          f"(zero-shot yes/no) {res['whole_pair']:.3f}; whole right when the clause is right "
          f"{res['whole_when_clause_right']}, when it is wrong {res['whole_when_clause_wrong']}")
    for name in ("by_kind", "by_chosen_margin"):
        print(f"\n{name:<16} {'n':>5} {'clause pair':>12} {'yes|chosen':>11} {'no|rejected':>12} {'whole pair':>11}")
        for k, r in res[name].items():
            print(f"{k:<16} {r['n']:>5} {r['clause_pair']:>12.3f} {r['yes_on_chosen']:>11.3f} "
                  f"{r['no_on_rejected']:>12.3f} {r['whole_pair']:>11.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
