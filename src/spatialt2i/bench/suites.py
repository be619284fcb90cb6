"""Public benchmark suites: their prompts, the questions their judges ask, and their table columns.

Prompt files are read from ``shared/benchmarks/`` next to the repository when present (or from
``$SPATIALT2I_BENCHMARKS_DIR``), else from the copies shipped in the package
(``bench/suites/``: only files whose licenses allow it, with their LICENSE files and an attribution
README). TIIF-Bench has no license and is read only from a path the user gives; DPG-Bench's
question file ``dpg_bench.csv`` is not shipped either and is read from a user-given path.

Suites (``SUITES``), their items and table columns:

- ``geneval-position``: GenEval's 100 "position" prompts; boxes + the box-centre rule -> position.
- ``t2i-compbench-spatial`` / ``-3d-spatial``: 300 val prompts each; one yes/no question a prompt
  -> spatial / 3d-spatial.
- ``dpg-bench``: 1,065 prompts x the questions of ``dpg_bench.csv`` (with dependencies)
  -> overall, relation, relation - spatial.
- ``unigenbench-short`` / ``-long``: rows with a layout testpoint; one question per layout
  testpoint -> layout 2D, layout 3D.
- ``tiif-short`` / ``tiif-long``: ``<type>_prompts.jsonl`` x ``<type>_eval_prompts.jsonl`` yes/no
  checklists -> basic relation, attribute+relation, relation+reasoning (+ other types).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

PACKAGED = Path(__file__).with_name("suites")
ENV_DIR = "SPATIALT2I_BENCHMARKS_DIR"
LAYOUT_2D = "Entity Layout - Two-Dimensional Space"
LAYOUT_3D = "Entity Layout - Three-Dimensional Space"
UNIGEN_COLUMNS = {LAYOUT_2D: "layout 2D", LAYOUT_3D: "layout 3D"}
TIIF_COLUMNS = ("basic relation", "attribute+relation", "relation+reasoning")


@dataclass(frozen=True)
class Question:
    """One judge question. ``expected``: the answer that counts as a pass (TIIF has "no" answers);
    ``parents``: qids whose "no" zeroes this question in the overall score (DPG-Bench)."""

    qid: str
    text: str
    dimension: str
    expected: bool = True
    parents: tuple[str, ...] = ()


@dataclass
class BenchItem:
    """One prompt: ``id`` is unique in its suite and safe as a folder name."""

    id: str
    prompt: str
    questions: tuple[Question, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Suite:
    """``protocol``: "geneval" (detector boxes) or "yesno" (yes/no questions, suite ``style``).
    ``columns``: the table's columns; ``column_of`` maps a question dimension to its column (missing:
    the dimension itself); ``per_question``: columns averaged over questions, not over images."""

    name: str
    protocol: str
    style: str
    items: list[BenchItem]
    columns: tuple[str, ...]
    source: str
    column_of: dict[str, str] = field(default_factory=dict)
    per_question: frozenset[str] = frozenset()
    skipped: list[str] = field(default_factory=list)

    def column(self, dimension: str) -> str:
        return self.column_of.get(dimension, dimension)


def benchmarks_dir() -> Path:
    """Where prompt files are read from: $SPATIALT2I_BENCHMARKS_DIR, ../shared/benchmarks, the package."""
    env = os.environ.get(ENV_DIR)
    if env:
        p = Path(env)
        if not p.is_dir():
            raise ConfigError(f"${ENV_DIR}={env} is not a folder")
        return p
    shared = Path(__file__).resolve().parents[3].parent / "shared" / "benchmarks"
    return shared if shared.is_dir() else PACKAGED


def _file(root: Path, rel: str) -> Path:
    p = root / rel
    if not p.is_file():
        raise DatasetError(f"benchmark file {p} is missing")
    return p


def _jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}, line {n}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{path}, line {n}: expected a JSON object")
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ suites

def geneval_position(root: Path) -> Suite:
    path = _file(root, "geneval/evaluation_metadata.jsonl")
    items = []
    for i, row in enumerate(_jsonl(path)):
        if row.get("tag") != "position":
            continue
        q = Question("position", row["prompt"], "position")
        items.append(BenchItem(f"{i:04d}", row["prompt"], (q,), {"include": row["include"]}))
    return Suite("geneval-position", "geneval", "boxes", items, ("position",), str(path))


def compbench_question(prompt: str) -> str:
    """T2I-CompBench's prompt as one yes/no question (its MLLM protocol asks whether the image matches)."""
    return f'Does the image show "{prompt.rstrip(".")}", with the objects placed as described?'


def compbench(root: Path, which: str) -> Suite:
    fname, dim = {"spatial": ("spatial_val.txt", "spatial"), "3d-spatial": ("3d_spatial_val.txt", "3d-spatial")}[which]
    path = _file(root, f"t2i-compbench/{fname}")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    items = [BenchItem(f"{i:03d}", p, (Question("q0", compbench_question(p), dim),)) for i, p in enumerate(lines) if p]
    return Suite(f"t2i-compbench-{which}", "yesno", "prompt", items, (dim,), str(path))


def read_dpg_csv(path: Path) -> dict[str, list[Question]]:
    """DPG-Bench's ``dpg_bench.csv``: item_id, proposition_id, dependency, tuple, question_natural_language.
    The dimension of a question is its L2 category (the tuple's text before "(", e.g. "relation - spatial")."""
    if not path.is_file():
        raise ConfigError(f"--dpg-csv {path}: no such file (DPG-Bench's dpg_bench.csv)")
    out: dict[str, list[Question]] = {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = {"item_id", "proposition_id", "dependency", "tuple", "question_natural_language"}
        missing = need - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"{path}: missing column(s) {sorted(missing)}")
        for n, row in enumerate(reader, 2):
            try:
                parents = tuple(str(int(d)) for d in row["dependency"].split(",") if int(d) != 0)
                qid = str(int(row["proposition_id"]))
            except ValueError:
                raise DatasetError(f"{path}, line {n}: bad proposition_id/dependency {row['proposition_id']!r}/"
                                   f"{row['dependency']!r}") from None
            dim = row["tuple"].split("(")[0].strip()
            out.setdefault(row["item_id"].strip(), []).append(
                Question(qid, row["question_natural_language"].strip(), dim, True, parents))
    return out


def dpg_bench(root: Path, dpg_csv: str | os.PathLike | None) -> Suite:
    if dpg_csv is None:
        raise ConfigError("suite dpg-bench needs DPG-Bench's question file dpg_bench.csv (not shipped: get it from "
                          "TencentQQGYLab/ELLA, dpg_bench/dpg_bench.csv) -- pass --dpg-csv PATH")
    path = _file(root, "dpg-bench/prompts.jsonl")
    questions = read_dpg_csv(Path(dpg_csv))
    items, skipped = [], []
    for row in _jsonl(path):
        qs = questions.get(str(row["id"]))
        if not qs:
            skipped.append(f"{row['id']}: no questions in {dpg_csv}")
            continue
        items.append(BenchItem(str(row["id"]), row["prompt"], tuple(qs)))
    if skipped:
        log.warning("dpg-bench: %d prompt(s) without questions skipped (first: %s)", len(skipped), skipped[0])
    cols = ("overall", "relation", "relation - spatial")
    return Suite("dpg-bench", "yesno", "questions", items, cols, f"{path} + {dpg_csv}",
                 per_question=frozenset(cols[1:]), skipped=skipped)


def unigenbench(root: Path, length: str) -> Suite:
    path = _file(root, f"unigenbench/test_prompts_en{'_long' if length == 'long' else ''}.csv")
    items, skipped = [], []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                dims = json.loads(row["sub_dims_en"])
                points, descs = dims["Testpoints"], dims["Testpoint Description"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                skipped.append(f"index {row.get('index')}: sub_dims_en unreadable ({e})")
                continue
            qs = tuple(Question(f"t{k}", f"{tp}: {desc}", UNIGEN_COLUMNS[tp])
                       for k, (tp, desc) in enumerate(zip(points, descs)) if tp in UNIGEN_COLUMNS)
            if qs:
                items.append(BenchItem(f"{int(row['index']):03d}", row["prompt_en"], qs))
    for s in skipped:
        log.warning("unigenbench-%s: row skipped, %s", length, s)
    cols = tuple(UNIGEN_COLUMNS.values())
    return Suite(f"unigenbench-{length}", "yesno", "testpoints", items, cols, str(path),
                 per_question=frozenset(cols), skipped=skipped)


_ATTR = {"color", "colour", "shape", "texture", "attribute"}
_REL = {"2d", "3d", "spatial", "action", "relation"}
_REASON = {"differentiation", "comparison", "negation", "universal", "reasoning"}


def tiif_column(kind: str) -> str:
    """TIIF ``type`` -> the paper's column: a basic relation type (no "+": 2d/3d spatial, action),
    attribute+relation ("color+2d"), relation+reasoning ("2d+negation"); else the type itself."""
    parts = [set(re.split(r"[_\s-]+", p.lower())) for p in kind.split("+")]
    rel = [bool(p & _REL) for p in parts]
    if len(parts) == 1:
        return "basic relation" if rel[0] else kind
    if any(rel) and any(p & _ATTR for p in parts):
        return "attribute+relation"
    if any(rel) and any(p & _REASON for p in parts):
        return "relation+reasoning"
    return kind


def find_tiif_dirs(path: Path) -> tuple[Path, Path]:
    """The (prompts, eval prompts) folders under a TIIF-Bench checkout, its ``data/``, or that folder."""
    for base in (path, path / "data"):
        for split in ("test", "testmini"):
            p, e = base / f"{split}_prompts", base / f"{split}_eval_prompts"
            if p.is_dir() and e.is_dir() and any(e.glob("*_eval_prompts.jsonl")):
                return p, e
    raise ConfigError(f"--tiif-path {path}: no TIIF-Bench data found (need <split>_prompts/ and "
                      f"<split>_eval_prompts/ with *_eval_prompts.jsonl, split test or testmini, in it or "
                      f"in its data/)")


def tiif(tiif_path: str | os.PathLike | None, length: str) -> Suite:
    if tiif_path is None:
        raise ConfigError(f"suite tiif-{length} reads TIIF-Bench from your copy (it has no license, so it is "
                          f"not shipped): pass --tiif-path PATH (a TIIF-Bench checkout or its data/ folder)")
    path = Path(tiif_path)
    if not path.is_dir():
        raise ConfigError(f"--tiif-path {path}: no such folder")
    pdir, edir = find_tiif_dirs(path)
    key = f"{length}_description"
    items, skipped = [], []
    for efile in sorted(edir.glob("*_eval_prompts.jsonl")):
        stem = efile.name[: -len("_eval_prompts.jsonl")]
        pfile = pdir / f"{stem}_prompts.jsonl"
        if not pfile.is_file():
            skipped.append(f"{efile.name}: no {pfile.name}")
            continue
        prompts, evals = _jsonl(pfile), _jsonl(efile)
        if len(prompts) != len(evals):
            raise DatasetError(f"{pfile} has {len(prompts)} lines but {efile} has {len(evals)} "
                               f"(they must be line-aligned)")
        for i, (p, e) in enumerate(zip(prompts, evals)):
            qs, ans = e.get("yn_question_list"), e.get("yn_answer_list")
            if not (isinstance(qs, list) and isinstance(ans, list) and len(qs) == len(ans) and qs and p.get(key)):
                skipped.append(f"{efile.name} line {i + 1}: missing {key} or yn_question_list/yn_answer_list")
                continue
            kind = str(p.get("type") or stem)
            questions = tuple(Question(f"q{k}", str(q).strip(), kind, str(a).strip().lower() == "yes")
                              for k, (q, a) in enumerate(zip(qs, ans)))
            items.append(BenchItem(f"{stem}-{i:03d}", str(p[key]), questions, {"type": kind}))
    for s in skipped:
        log.warning("tiif-%s: skipped %s", length, s)
    if not items:
        raise DatasetError(f"--tiif-path {path}: no usable prompts in {pdir} / {edir}")
    kinds = sorted({q.dimension for it in items for q in it.questions})
    column_of = {k: tiif_column(k) for k in kinds}
    extra = tuple(sorted({c for c in column_of.values() if c not in TIIF_COLUMNS}))
    return Suite(f"tiif-{length}", "yesno", "questions", items, TIIF_COLUMNS + extra, f"{pdir} + {edir}",
                 column_of=column_of, skipped=skipped)


SUITES: dict[str, str] = {
    "geneval-position": "GenEval position (100 prompts): detector boxes + GenEval's box-centre rule",
    "t2i-compbench-spatial": "T2I-CompBench spatial (300 val prompts), yes/no judge",
    "t2i-compbench-3d-spatial": "T2I-CompBench 3d-spatial (300 val prompts), yes/no judge",
    "dpg-bench": "DPG-Bench (1,065 prompts) with its question file (--dpg-csv), dependency-aware",
    "unigenbench-short": "UniGenBench++ short prompts with a layout 2D/3D testpoint",
    "unigenbench-long": "UniGenBench++ long prompts with a layout 2D/3D testpoint",
    "tiif-short": "TIIF-Bench short descriptions (--tiif-path), yes/no checklists",
    "tiif-long": "TIIF-Bench long descriptions (--tiif-path), yes/no checklists",
}


def load_suite(name: str, *, tiif_path: str | os.PathLike | None = None,
               dpg_csv: str | os.PathLike | None = None, root: str | os.PathLike | None = None) -> Suite:
    """Load suite ``name`` (see :data:`SUITES`); ``root`` overrides :func:`benchmarks_dir`."""
    if name not in SUITES:
        raise ConfigError(f"--suite {name!r}: unknown suite (choose from {', '.join(SUITES)})")
    base = Path(root) if root is not None else benchmarks_dir()
    if name == "geneval-position":
        suite = geneval_position(base)
    elif name.startswith("t2i-compbench-"):
        suite = compbench(base, name[len("t2i-compbench-"):])
    elif name == "dpg-bench":
        suite = dpg_bench(base, dpg_csv)
    elif name.startswith("unigenbench-"):
        suite = unigenbench(base, name.split("-")[1])
    else:
        suite = tiif(tiif_path, name.split("-")[1])
    ids = [it.id for it in suite.items]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"suite {name}: duplicate prompt ids in {suite.source}")
    return suite
