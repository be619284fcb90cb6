"""Public benchmark harness end to end: tiny Flux generator, a judge served by a local chat server.

The fake judge answers by a rule on the question text (or, for GenEval boxes, by a fixed layout),
so every test knows which answers were served and checks that exactly those reach the table.
"""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch

from spatialt2i.bench.geneval import VLMDetector
from spatialt2i.bench.judges_public import ChatJudge
from spatialt2i.bench.public import run_suite
from spatialt2i.bench.suites import load_suite
from spatialt2i.data.llm import ChatClient, LLMConfig
from spatialt2i.gen.flux import FluxGenerator
from spatialt2i.gen.tiny import build_tiny_flux_pipeline
from spatialt2i.testing.chat_server import ChatServer, message_images, message_text

torch.set_num_threads(1)
RUN = dict(n_images=2, steps=2, resolution=64, batch_size=2, progress=False)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny_flux")
    build_tiny_flux_pipeline(d, seed=0)
    return d


class CountingGen:
    """The tiny generator, counting ``sample`` calls and images; optionally dies after ``die_after`` calls."""

    def __init__(self, gen: FluxGenerator, die_after: int | None = None) -> None:
        self.gen, self.calls, self.images, self.die_after = gen, 0, 0, die_after

    def sample(self, prompts: list[str], seeds: list[int], steps: int, **kw: Any) -> Any:
        if self.die_after is not None and self.calls >= self.die_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        self.images += len(prompts)
        return self.gen.sample(prompts, seeds, steps, **kw)


@pytest.fixture(scope="module")
def gen(tiny_dir: Path) -> FluxGenerator:
    return FluxGenerator.from_pretrained(tiny_dir, height=64, width=64, max_sequence_length=32)


def rule(question: str) -> bool:
    """The fake judge's answer to a question: a fixed pseudo-random function of its text."""
    return zlib.crc32(question.strip().encode()) % 3 != 0


def numbered(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^\d+\. (.*)$", text, re.M)]


def yes_no_handler(messages: list[dict[str, Any]]) -> str:
    msg = messages[-1]
    assert len(message_images(msg)) == 1
    return "\n".join(("yes" if rule(q) else "no") + " - because" for q in numbered(message_text(msg)))


def boxes_handler(messages: list[dict[str, Any]]) -> str:
    """GenEval: the first named class on the left, the second on the right, same height."""
    text = message_text(messages[-1])
    classes = re.findall(r'"([^"]+)"', text.split("\n")[0])
    objs = [{"label": c, "box": [4 + 36 * i, 20, 20 + 36 * i, 36], "score": 0.9} for i, c in enumerate(classes)]
    return json.dumps({"objects": objs})


def judge_for(server: ChatServer, retries: int = 0) -> ChatJudge:
    return ChatJudge(ChatClient(LLMConfig(base_url=server.url, model="fake-vlm", max_retries=retries, backoff=0.01)))


def expected_scores(suite_name: str, items: list[Any]) -> dict[str, float]:
    """What the table must say, computed from the served answers with each suite's own rule."""
    if suite_name == "geneval-position":
        return {"position": sum(it.meta["include"][1]["position"][0] == "right of" for it in items) / len(items)}
    if suite_name.startswith("t2i-compbench"):
        col = items[0].questions[0].dimension
        return {col: sum(rule(it.questions[0].text) for it in items) / len(items)}
    if suite_name.startswith("unigenbench"):
        out = {}
        for col in ("layout 2D", "layout 3D"):
            qs = [q for it in items for q in it.questions if q.dimension == col]
            if qs:
                out[col] = sum(rule(q.text) for q in qs) / len(qs)
        return out
    if suite_name.startswith("tiif"):
        per: dict[str, list[float]] = {}
        for it in items:
            col = "basic relation" if it.meta["type"] == "2d_spatial_relation" else "attribute+relation"
            per.setdefault(col, []).append(sum(rule(q.text) == q.expected for q in it.questions) / len(it.questions))
        return {c: sum(v) / len(v) for c, v in per.items()}
    assert suite_name == "dpg-bench"
    overall, spatial = [], []
    for it in items:
        ans = {q.qid: rule(q.text) for q in it.questions}
        overall.append(sum(ans[q.qid] and all(ans[p] for p in q.parents) for q in it.questions) / len(it.questions))
        spatial += [ans[q.qid] for q in it.questions if q.dimension == "relation - spatial"]
    return {"overall": sum(overall) / len(overall), "relation - spatial": sum(spatial) / len(spatial)}


def write_tiif(root: Path) -> Path:
    p, e = root / "data" / "testmini_prompts", root / "data" / "testmini_eval_prompts"
    p.mkdir(parents=True)
    e.mkdir(parents=True)
    data = {"2d_spatial_relation": ["A cat is below a microwave.", "A red ball left of a box."],
            "color+2d": ["A blue cup above a green plate.", "A yellow kite right of a white cloud."]}
    for kind, prompts in data.items():
        with (p / f"{kind}_prompts.jsonl").open("w") as f, (e / f"{kind}_eval_prompts.jsonl").open("w") as g:
            for s in prompts:
                f.write(json.dumps({"type": kind, "short_description": s, "long_description": s + " In detail."}) + "\n")
                qs = [f"Is there {w}?" for w in s.rstrip(".").split()[1:4]]
                g.write(json.dumps({"type": kind, "yn_question_list": qs, "yn_answer_list": ["yes", "no", "yes"][:len(qs)]}) + "\n")
    return root


def write_dpg_csv(path: Path, ids: list[str]) -> Path:
    rows = ["item_id,text,keywords,proposition_id,dependency,category_broad,category_detailed,tuple,question_natural_language"]
    for i in ids:
        rows += [f'{i},t,k,1,0,entity,whole,entity - whole (cabbage),"Are there cabbages in {i}?"',
                 f'{i},t,k,2,1,relation,spatial,"relation - spatial (cabbage, field; in)","Are the cabbages in the field {i}?"',
                 f'{i},t,k,3,"1,2",relation,spatial,"relation - spatial (dew, cabbage; on)","Is dew on the cabbages {i}?"']
    path.write_text("\n".join(rows) + "\n")
    return path


SUITE_CASES = ["geneval-position", "t2i-compbench-spatial", "t2i-compbench-3d-spatial", "dpg-bench",
               "unigenbench-short", "unigenbench-long", "tiif-short", "tiif-long"]


@pytest.mark.parametrize("name", SUITE_CASES)
def test_every_suite_end_to_end_scores_flow_into_table(name: str, gen: FluxGenerator, tmp_path: Path) -> None:
    kw: dict[str, Any] = {}
    if name.startswith("tiif"):
        kw["tiif_path"] = write_tiif(tmp_path / "tiif")
    if name == "dpg-bench":
        kw["dpg_csv"] = write_dpg_csv(tmp_path / "dpg.csv", ["0", "1", "2"])
    suite = load_suite(name, **kw)
    m = 4 if name.startswith("tiif") else 3
    handler = boxes_handler if name == "geneval-position" else yes_no_handler
    with ChatServer(handler) as server:
        judge = judge_for(server)
        det = VLMDetector(judge) if suite.protocol == "geneval" else None
        table = run_suite(suite, CountingGen(gen), judge=judge, out=tmp_path / "out", max_prompts=m,
                          detector=det, **RUN)
        assert len(server.requests) == m * 2
    row = table["rows"][0]
    for col, val in expected_scores(name, suite.items[:m]).items():
        assert row[col] == pytest.approx(val, abs=1e-12), col
    assert table["images"] == m * 2 and table["failures"] == 0
    assert len((tmp_path / "out" / "results.jsonl").read_text().splitlines()) == m * 2
    md = (tmp_path / "out" / "table.md").read_text()
    assert f"### {name}" in md and "| model |" in md
    assert all((tmp_path / "out" / "images" / it.id / f"{k}.png").is_file() for it in suite.items[:m] for k in (0, 1))


def test_table_shows_published_numbers(gen: FluxGenerator, tmp_path: Path) -> None:
    with ChatServer(yes_no_handler) as server:
        table = run_suite("unigenbench-short", CountingGen(gen), judge=judge_for(server), out=tmp_path,
                          max_prompts=1, **{**RUN, "n_images": 1})
    ref = {r["model"]: r for r in table["rows"]}
    assert ref["FLUX.1-dev (published)"]["layout 2D"] == 0.766
    assert ref["FLUX.1-dev + SpatialScore RL (published)"]["layout 3D"] == 0.773
    assert "0.766" in (tmp_path / "table.md").read_text()


def test_resume_after_kill_regenerates_and_rejudges_nothing(gen: FluxGenerator, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with ChatServer(yes_no_handler) as server:
        judge = judge_for(server)
        dying = CountingGen(gen, die_after=1)  # 3 prompts x 2 images = 3 batches; dies in the 2nd
        with pytest.raises(KeyboardInterrupt):
            run_suite("t2i-compbench-spatial", dying, judge=judge, out=out, max_prompts=3, **RUN)
        assert dying.images == 2 and len(server.requests) == 2
        pngs = sorted(out.glob("images/*/*.png"))
        mtimes = {p: p.stat().st_mtime_ns for p in pngs}

        again = CountingGen(gen)
        table = run_suite("t2i-compbench-spatial", again, judge=judge, out=out, max_prompts=3, **RUN)
        assert again.images == 4 and len(server.requests) == 6
        assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
        assert table["images"] == 6

        third = CountingGen(gen)
        run_suite("t2i-compbench-spatial", third, judge=judge, out=out, max_prompts=3, **RUN)
        assert third.calls == 0 and len(server.requests) == 6


def test_image_on_disk_is_judged_without_regenerating(gen: FluxGenerator, tmp_path: Path) -> None:
    """A kill between saving an image and judging it: the rerun judges the saved image."""
    out = tmp_path / "out"
    with ChatServer(yes_no_handler) as server:
        judge = judge_for(server)
        run_suite("t2i-compbench-spatial", CountingGen(gen), judge=judge, out=out, max_prompts=1, **RUN)
        (out / "scores" / "rank0.jsonl").write_text("")
        again = CountingGen(gen)
        table = run_suite("t2i-compbench-spatial", again, judge=judge, out=out, max_prompts=1, **RUN)
    assert again.calls == 0 and table["images"] == 2


def test_malformed_answer_is_retried_then_recorded_as_failure(gen: FluxGenerator, tmp_path: Path) -> None:
    suite = load_suite("t2i-compbench-spatial")
    bad_q = suite.items[0].questions[0].text
    flaky_q = suite.items[1].questions[0].text
    seen: dict[str, int] = {}

    def handler(messages: list[dict[str, Any]]) -> str:
        q = numbered(message_text(messages[-1]))[0]
        seen[q] = seen.get(q, 0) + 1
        if q == bad_q:
            return "I cannot tell."
        if q == flaky_q and seen[q] % 2 == 1:
            return "maybe"
        return "yes"

    with ChatServer(handler) as server:
        table = run_suite(suite, CountingGen(gen), judge=judge_for(server), out=tmp_path, max_prompts=2,
                          retries=2, workers=1, **RUN)
    recs = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    bad = [r for r in recs if r["id"] == suite.items[0].id]
    assert all(r["failure"] == "expected 1 yes/no line(s), got 0" and r["attempts"] == 3 for r in bad)
    assert all(r["answers"][0]["passed"] is False and r["answers"][0]["answer"] is None for r in bad)
    assert seen[bad_q] == 2 * 3  # two images, 1 + 2 retries each
    flaky = [r for r in recs if r["id"] == suite.items[1].id]
    assert all(r["failure"] is None and r["attempts"] == 2 and r["answers"][0]["passed"] for r in flaky)
    assert table["failures"] == 2 and table["rows"][0]["spatial"] == 0.5
    assert "expected 1 yes/no line(s), got 0" in (tmp_path / "table.md").read_text()


def test_bad_suite_and_missing_inputs_name_the_input(tmp_path: Path) -> None:
    from spatialt2i.errors import ConfigError

    with pytest.raises(ConfigError, match="--suite 'geneval-colour'.*geneval-position"):
        load_suite("geneval-colour")
    with pytest.raises(ConfigError, match="--tiif-path"):
        load_suite("tiif-short")
    with pytest.raises(ConfigError, match=f"--tiif-path {tmp_path / 'nope'}: no such folder"):
        load_suite("tiif-long", tiif_path=tmp_path / "nope")
    with pytest.raises(ConfigError, match="no TIIF-Bench data"):
        load_suite("tiif-long", tiif_path=tmp_path)
    with pytest.raises(ConfigError, match="--dpg-csv"):
        load_suite("dpg-bench")


def test_changed_settings_on_resume_are_refused(gen: FluxGenerator, tmp_path: Path) -> None:
    from spatialt2i.errors import ConfigError

    with ChatServer(yes_no_handler) as server:
        judge = judge_for(server)
        run_suite("t2i-compbench-spatial", CountingGen(gen), judge=judge, out=tmp_path, max_prompts=1, **RUN)
        with pytest.raises(ConfigError, match="seeds"):
            run_suite("t2i-compbench-spatial", CountingGen(gen), judge=judge, out=tmp_path, max_prompts=1,
                      seeds=[7, 8], **{k: v for k, v in RUN.items()})
