"""Public benchmark harness pieces: GenEval's rule, answer parsers, detectors, the local Qwen judge,
sharding across processes, and the ``bench run`` / ``bench suites`` commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from spatialt2i.bench.geneval import Box, WorldDetector, geneval_relation, geneval_verdict, parse_boxes
from spatialt2i.bench.judges_public import QwenJudge, parse_yes_no
from spatialt2i.errors import MalformedAnswer

torch.set_num_threads(1)
INCLUDE = [{"class": "cup", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}]


def box(label: str, cx: float, cy: float, w: float = 0.2, h: float = 0.2, score: float = 1.0) -> Box:
    return Box(label, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, score)


def test_geneval_box_centre_rule() -> None:
    a, b = box("a", 0.2, 0.5), box("b", 0.8, 0.5)
    assert geneval_relation("left of", a, b) and geneval_relation("right of", b, a)
    assert not geneval_relation("above", a, b) and not geneval_relation("below", a, b)
    assert geneval_relation("above", box("a", 0.5, 0.1), box("b", 0.5, 0.9))
    # GenEval shrinks each axis offset by 0.1 x (sum of that axis's sizes): wide boxes close together are not "left"
    assert not geneval_relation("left of", box("a", 0.4, 0.5, w=0.6), box("b", 0.55, 0.5, w=0.6))
    assert geneval_relation("left of", box("a", 0.4, 0.5, w=0.1), box("b", 0.55, 0.5, w=0.1))


def test_geneval_verdict_counts_and_positions() -> None:
    assert geneval_verdict(INCLUDE, [box("cup", 0.2, 0.5), box("dog", 0.8, 0.5)]) == (True, "")
    ok, why = geneval_verdict(INCLUDE, [box("cup", 0.8, 0.5), box("dog", 0.2, 0.5)])
    assert not ok and why == "dog is not right of cup"
    ok, why = geneval_verdict(INCLUDE, [box("cup", 0.2, 0.5)])
    assert not ok and why == "dog: found 0 of 1"
    # only the most confident box of each class counts
    boxes = [box("cup", 0.2, 0.5), box("dog", 0.1, 0.5, score=0.3), box("dog", 0.8, 0.5, score=0.9)]
    assert geneval_verdict(INCLUDE, boxes)[0]


def test_parse_yes_no() -> None:
    assert parse_yes_no("1. Yes, clearly\n2) **no** it is not\n- YES", 3) == [True, False, True]
    assert parse_yes_no("Here are my answers:\nyes\nno", 2) == [True, False]
    with pytest.raises(MalformedAnswer, match="expected 2 yes/no line"):
        parse_yes_no("yes", 2)
    with pytest.raises(MalformedAnswer, match="empty"):
        parse_yes_no("  ", 1)
    with pytest.raises(MalformedAnswer):
        parse_yes_no("yesterday\nnobody", 2)


def test_parse_boxes() -> None:
    text = '```json\n{"objects": [{"label": "Cup", "box": [0, 10, 32, 50]}, {"label": "cat", "box": [1, 1, 2, 2]}]}\n```'
    assert parse_boxes(text, ["cup", "dog"], 64, 64) == [Box("cup", 0.0, 10 / 64, 0.5, 50 / 64, 1.0)]
    for bad, why in [('{"objects": [{"label": "cup", "box": [0, 0, 90, 10]}]}', "not inside"),
                     ('{"objects": [{"label": "cup", "box": [5, 0, 1, 10]}]}', "not inside"),
                     ('{"objects": [{"label": "cup", "box": [0, 0, 1]}]}', "4 numbers"),
                     ('{"things": 1}', "objects"), ("no json here", "not JSON")]:
        with pytest.raises(MalformedAnswer, match=why):
            parse_boxes(bad, ["cup"], 64, 64)


def test_world_detector_feeds_the_geneval_rule() -> None:
    from spatialt2i.world.render import draw_shape
    from spatialt2i.world.vocab import BACKGROUND, COLOURS

    img = Image.new("RGB", (64, 64), BACKGROUND)
    d = ImageDraw.Draw(img)
    draw_shape(d, "circle", (4, 24, 20, 40), COLOURS["red"])
    draw_shape(d, "square", (44, 24, 60, 40), COLOURS["blue"])
    boxes = WorldDetector().detect(img, ["red circle", "blue square", "green star"])
    assert sorted(b.label for b in boxes) == ["blue square", "red circle"]
    inc = [{"class": "red circle", "count": 1}, {"class": "blue square", "count": 1, "position": ["right of", 0]}]
    assert geneval_verdict(inc, boxes) == (True, "")
    inc[1]["position"] = ["left of", 0]
    assert not geneval_verdict(inc, boxes)[0]


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from spatialt2i.reward.tiny import init_tiny

    return init_tiny(tmp_path_factory.mktemp("qwen") / "tiny", "small", seed=0)


def test_local_qwen_judge_answers_by_yes_no_logits(tiny_qwen: Path) -> None:
    judge = QwenJudge(str(tiny_qwen))
    img = Image.new("RGB", (64, 64), (200, 30, 30))
    qs = ["is the red circle left of the blue square", "is there a star"]
    ans = judge.yes_no(img, qs)
    assert len(ans) == 2 and all(isinstance(a, bool) for a in ans)
    enc = judge._inputs([judge._chat(f"{qs[0]} Answer yes or no.")], [img])
    with torch.no_grad():
        logits = judge.model(**enc).logits[0, -1]
    assert ans[0] == bool(logits[judge.yes_id] > logits[judge.no_id])
    judge.max_new_tokens = 4  # free text (GenEval boxes through VLMDetector) comes from greedy generate
    assert isinstance(judge.complete(img, "describe the image"), str)


class FakeState:
    """accelerate's PartialState for process ``index`` of ``n`` (barriers are no-ops)."""

    def __init__(self, index: int, n: int) -> None:
        self.process_index, self.num_processes = index, n
        self.is_main_process, self.device = index == 0, torch.device("cpu")

    def wait_for_everyone(self) -> None:
        pass


def test_sharded_run_splits_prompts_and_merges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    import accelerate

    from spatialt2i.bench.public import run_suite
    from spatialt2i.gen.flux import FluxGenerator
    from spatialt2i.gen.tiny import build_tiny_flux_pipeline
    from test_bench_public import CountingGen, judge_for, yes_no_handler
    from spatialt2i.testing.chat_server import ChatServer

    d = tmp_path_factory.mktemp("flux")
    build_tiny_flux_pipeline(d, seed=0)
    gen = FluxGenerator.from_pretrained(d, height=64, width=64, max_sequence_length=32)
    kw = dict(out=tmp_path, max_prompts=5, n_images=1, steps=2, resolution=64, batch_size=4, progress=False)
    with ChatServer(yes_no_handler) as server:
        judge = judge_for(server)
        monkeypatch.setattr(accelerate, "PartialState", lambda: FakeState(1, 2))
        g1 = CountingGen(gen)
        assert run_suite("t2i-compbench-spatial", g1, judge=judge, **kw) is None
        monkeypatch.setattr(accelerate, "PartialState", lambda: FakeState(0, 2))
        g0 = CountingGen(gen)
        table = run_suite("t2i-compbench-spatial", g0, judge=judge, **kw)
    assert (g0.images, g1.images) == (3, 2)
    assert sorted(p.name for p in (tmp_path / "scores").iterdir()) == ["rank0.jsonl", "rank1.jsonl"]
    ids1 = {json.loads(x)["id"] for x in (tmp_path / "scores" / "rank1.jsonl").read_text().splitlines()}
    assert ids1 == {"001", "003"}
    assert table["images"] == 5 and table["prompts"] == 5


def _parser() -> argparse.ArgumentParser:
    from spatialt2i.bench.cli_public import register

    parser = argparse.ArgumentParser()
    top = parser.add_subparsers(dest="group")
    register({"bench": top.add_parser("bench").add_subparsers(dest="command")})
    return parser


def test_cli_run_and_suites(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            tmp_path_factory: pytest.TempPathFactory) -> None:
    from spatialt2i.gen.tiny import build_tiny_flux_pipeline
    from test_bench_public import yes_no_handler
    from spatialt2i.testing.chat_server import ChatServer

    args = _parser().parse_args(["bench", "suites"])
    assert args.func(args) == 0
    assert "geneval-position" in capsys.readouterr().out
    gdir = tmp_path_factory.mktemp("flux")
    build_tiny_flux_pipeline(gdir, seed=0)
    with ChatServer(yes_no_handler) as server:
        argv = ["bench", "run", "--suite", "t2i-compbench-3d-spatial", "--generator", str(gdir), "--judge", "openai",
                "--judge-url", server.url, "--judge-model", "fake", "--out", str(tmp_path / "o"), "--seeds", "3,4",
                "--max-prompts", "1", "--steps", "2", "--resolution", "64"]
        args = _parser().parse_args(argv)
        assert args.func(args) == 0
    assert "### t2i-compbench-3d-spatial" in capsys.readouterr().out
    recs = [json.loads(x) for x in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in recs] == [3, 4]


def test_cli_errors_name_the_input(tmp_path: Path) -> None:
    from spatialt2i.errors import ConfigError

    args = _parser().parse_args(["bench", "run", "--suite", "nope", "--generator", "x", "--judge", "openai",
                                 "--out", str(tmp_path)])
    with pytest.raises(ConfigError, match="--suite 'nope'"):
        args.func(args)
    args = _parser().parse_args(["bench", "run", "--suite", "tiif-short", "--generator", "x", "--judge", "openai",
                                 "--out", str(tmp_path), "--tiif-path", str(tmp_path / "missing")])
    with pytest.raises(ConfigError, match="--tiif-path .*missing"):
        args.func(args)
    args = _parser().parse_args(["bench", "run", "--suite", "t2i-compbench-spatial", "--generator", "x",
                                 "--judge", "gpt", "--out", str(tmp_path)])
    with pytest.raises(ConfigError, match="--judge 'gpt'"):
        args.func(args)


def test_generator_path_with_lora_and_bad_lora(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    from diffusers import FluxPipeline

    from spatialt2i.bench.public import load_generator
    from spatialt2i.gen.tiny import build_tiny_flux_pipeline
    from spatialt2i.rl.lora import LoraLoadError, add_lora, save_lora

    gdir = tmp_path_factory.mktemp("flux")
    build_tiny_flux_pipeline(gdir, seed=0)
    pipe = FluxPipeline.from_pretrained(str(gdir))
    add_lora(pipe.transformer, rank=2, alpha=2.0, targets=["to_q", "to_v"])
    for n, p in pipe.transformer.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    save_lora(pipe.transformer, tmp_path / "lora")
    base = load_generator(gdir, None, 64)
    tuned = load_generator(gdir, tmp_path / "lora", 64)
    a = base.sample(["a red circle"], [0], 2, output_type="pt").images
    b = tuned.sample(["a red circle"], [0], 2, output_type="pt").images
    assert not torch.allclose(a, b)
    with pytest.raises(LoraLoadError, match="nowhere"):
        load_generator(gdir, tmp_path / "nowhere", 64)
