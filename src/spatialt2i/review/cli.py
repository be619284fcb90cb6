"""``spatialt2i review serve|export|stats``: human review of pair datasets.

Registered by ``spatialt2i.cli`` (``register(groups)``); also runnable alone as
``python -m spatialt2i.review.cli serve|export|stats ...``. FastAPI/uvicorn are imported only
inside ``serve``.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(groups: dict) -> None:
    sub = groups["review"]

    p = sub.add_parser("serve", help="serve the review web app for a pair dataset",
                       description="Serve the pair review app. Verdicts go to DATASET/review.sqlite (WAL).")
    p.add_argument("dataset", help="pair dataset folder (data/train-*.parquet, data/test-*.parquet)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; there are no passwords)")
    p.add_argument("--reviewers-per-pair", type=int, choices=(1, 2), default=None,
                   help="reviewers each pair is assigned to (remembered in the database; default 1)")
    p.add_argument("--reviewer", action="append", default=[], metavar="NAME",
                   help="add a reviewer to the roster up front (repeatable); others can join in the page")
    p.add_argument("--db", default=None, help="verdict database (default DATASET/review.sqlite)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("export", help="write a new dataset version with `verified` filled from the verdicts")
    p.add_argument("dataset")
    p.add_argument("--out", required=True, help="new dataset folder (must not exist, or be empty)")
    p.add_argument("--drop-rejected", action="store_true", help="leave out pairs whose verdict is reject")
    p.add_argument("--disagreement", choices=("reject", "null", "accept"), default="reject",
                   help="verified value of a pair whose reviewers disagree (default: reject = false)")
    p.add_argument("--db", default=None, help="verdict database (default DATASET/review.sqlite)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("stats", help="review progress and agreement (percent agreement, Cohen's kappa)")
    p.add_argument("dataset")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--db", default=None, help="verdict database (default DATASET/review.sqlite)")
    p.set_defaults(func=cmd_stats)


def cmd_serve(args: argparse.Namespace) -> int:
    from .app import serve

    svc = _service(args, reviewers_per_pair=args.reviewers_per_pair, reviewers=tuple(args.reviewer))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {args.host}: anyone who can reach it can post verdicts (no passwords)",
              file=sys.stderr)
    print(f"reviewing {len(svc.index)} pairs of {svc.index.root} ({svc.k} reviewer(s) per pair); "
          f"verdicts in {svc.store.path}", file=sys.stderr, flush=True)
    serve(svc, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export

    s = export(args.dataset, args.out, db=args.db, drop_rejected=args.drop_rejected, disagreement=args.disagreement)
    print(f"wrote {args.out}: {s['rows_out']} pairs (verified: {s['verified_true']} true, "
          f"{s['verified_false']} false, {s['verified_null']} null; dropped {s['dropped']})")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    svc = _service(args)
    st = svc.stats()
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    ag = st["agreement"]
    print(f"{st['dataset']}: {st['pairs']} pairs, {st['reviewers_per_pair']} reviewer(s) per pair, "
          f"{st['reviewed_pairs']} reviewed ({st['unanimous_accept']} accepted, {st['unanimous_reject']} "
          f"rejected, {st['disagreements']} disagreements)")
    for r in st["reviewers"]:
        print(f"  {r['reviewer']:<20} assigned {r['assigned']:>6}  accepted {r['accepted']:>6}  "
              f"rejected {r['rejected']:>6}  skipped {r['skipped']:>6}  remaining {r['remaining']:>6}")
    fmt = lambda x, spec: "n/a" if x is None else format(x, spec)  # noqa: E731
    print(f"agreement on {ag['n_items']} doubly reviewed pairs: {fmt(ag['percent_agreement'], '.1f')} %, "
          f"Cohen's kappa {fmt(ag['cohen_kappa'], '.3f')}")
    for b in ag["by_reviewer_pair"]:
        print(f"  {b['reviewers'][0]} / {b['reviewers'][1]}: n={b['n']}  "
              f"{fmt(b['percent_agreement'], '.1f')} %  kappa {fmt(b['cohen_kappa'], '.3f')}")
    return 0


def _service(args: argparse.Namespace, **kw):
    from .service import ReviewService

    return ReviewService(args.dataset, db=args.db, **kw)


def main(argv: list[str] | None = None) -> int:
    """``python -m spatialt2i.review.cli ...`` is ``spatialt2i review ...``."""
    from ..cli import main as cli_main

    return cli_main(["review", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
