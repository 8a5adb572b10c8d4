"""The paper's workflows (workflows/paper.py) end to end on a tiny dataset: Table 2, Figure 5, the attention
pages and the report with the real trainer and tiny configs; Tables 3 and 4 with a trainer script whose scores
follow from the config, so that the layout and the arithmetic are checked exactly."""
from __future__ import annotations

import csv
import json
import math
import sys
import textwrap
from pathlib import Path

import luigi
import pytest
from PIL import Image
from scipy.stats import ttest_rel

from test_model import TINY, write_dataset
from workflows.paper import Attention, Figure5, Report, Table2, Table3, Table4, dataset_features
from workflows.tables import oracle_predictions, paired_ttest

REAL_TRAINER = f"{sys.executable} -c 'from model.cli import train; train()'"
# Tiny runs: 2 epochs, small beam; one thread.
OVERRIDES = {**TINY, "epochs": 2, "warmup_epochs": 1, "beam": 3, "batch_size": 4}

# Scores follow from the config: f1@1 = 10 x text_layers + heads + head_dim / 100 + seed, f1@3 = 10 + 5 x OCR
# + 2 x attributes + seed, map@5 = 40 + seed. No predictions are written.
CONFIG_TRAINER = textwrap.dedent("""\
    import argparse, json, pathlib
    from model.config import load_config
    p = argparse.ArgumentParser()
    for opt in ("--data", "--config", "--out", "--device"):
        p.add_argument(opt)
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true")
    a = p.parse_args()
    c = load_config(a.config)
    scores = {"f1@1": 10 * c.text_layers + c.heads + c.head_dim / 100 + a.seed,
              "f1@3": 10 + 5 * c.image_wordings + 2 * c.use_attributes + a.seed, "map@5": 40.0 + a.seed}
    pathlib.Path(a.out, "metrics.json").write_text(json.dumps({"valid": scores}))
""")


def build(*tasks) -> bool:
    return luigi.build(list(tasks), local_scheduler=True, workers=1, log_level="WARNING")


def tiny_shards(root: Path) -> Path:
    """test_model's eight posts in train and valid, VGG grids on every other post, no BUTD."""
    return write_dataset(root)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """Table 2 (rows cls-butd-max, cls-max and the full model; seeds 1, 2) trained for real, once."""
    root = tmp_path_factory.mktemp("paper")
    shards = tiny_shards(root / "shards")
    params = dict(shards_dir=str(shards), work_dir=str(root / "work"), trainer=REAL_TRAINER, seeds=(1, 2),
                  overrides=OVERRIDES, train_args="--quiet --threads 1")
    assert build(Table2(rows=("cls-butd-max", "cls-max", "gen-cls-m3h-att-hybrid"), **params))
    return params


def run_dirs(work: str, name: str) -> list[Path]:
    found = sorted(Path(work, "runs").glob(f"{name}-o*"))
    assert len(found) == 1, found
    return [found[0] / f"seed-{s}" for s in (1, 2)]


def test_paired_ttest_matches_scipy_on_hand_made_scores():
    full, other = [30.0, 32.0, 35.0, 31.0], [28.0, 30.0, 31.0, 30.0]
    test = paired_ttest(full, other)
    # differences 2, 2, 4, 1: mean 2.25, sd sqrt(4.75 / 3), t = 2.25 / (sd / 2)
    assert test["t"] == pytest.approx(2.25 / (math.sqrt(4.75 / 3) / 2))
    assert test["p"] == pytest.approx(ttest_rel(full, other).pvalue) and test["p"] < 0.05 and test["beats"]
    assert not paired_ttest(other, full)["beats"]                          # significant, but the other way
    assert paired_ttest([1.0], [2.0]) == {"t": None, "p": None, "beats": False}
    assert paired_ttest([1.0, 2.0], [1.0, 2.0])["p"] is None               # no spread in the differences
    with pytest.raises(ValueError, match="same seeds"):
        paired_ttest([1.0, 2.0], [1.0])


def test_oracle_predicts_the_present_gold_keyphrases():
    gold = [["cats", "caturday"], ["tech news"], ["baking"]]
    sources = ["my cat sleeping", "new tech  news today", "bread"]
    assert oracle_predictions(gold, sources) == [["cats"], ["tech news"], [""]]


def test_table2_numbers_are_the_runs_metrics(suite):
    table_dir = Path(suite["work_dir"], "paper", "table2")
    table = json.loads((table_dir / "table2.json").read_text())
    rows = {r["row"]: r for r in table["rows"]}
    assert [r["row"] for r in table["rows"]] == ["ext-oracle", "cls-butd-max", "cls-max", "gen-cls-m3h-att-hybrid",
                                                 "gen-cls-m3h-att"]
    assert table["features"] == ["attributes", "ocr", "vgg"] == sorted(dataset_features(suite["shards_dir"]))
    assert rows["cls-butd-max"]["status"] == "skipped" and "butd" in rows["cls-butd-max"]["note"]
    # the hybrid memory compares the posts' sentence embeddings, a group this dataset was built without
    hybrid = rows["gen-cls-m3h-att-hybrid"]
    assert hybrid["status"] == "skipped" and "needs text_embedding" in hybrid["note"]
    values = {}
    for name in ("cls-max", "gen-cls-m3h-att"):
        metrics = [json.loads((d / "metrics.json").read_text())["valid"] for d in run_dirs(suite["work_dir"], name)]
        for key in ("f1@1", "f1@3", "map@5"):
            values[name, key] = [m[key] for m in metrics]
            assert rows[name][key]["values"] == values[name, key]
            assert rows[name][key]["mean"] == pytest.approx(sum(values[name, key]) / 2)
    for key in ("f1@1", "f1@3", "map@5"):
        expected = ttest_rel(values["gen-cls-m3h-att", key], values["cls-max", key]).pvalue
        got = rows["cls-max"]["ttest"][key]["p"]
        assert (got is None and math.isnan(expected)) or got == pytest.approx(expected)
    assert "ttest" not in rows["gen-cls-m3h-att"]
    # EXT-ORACLE on the eight valid posts: "zorblat", "cats" (of cats;caturday) and "baking" occur in their posts:
    # P@1 3/8, R@1 (1 + 1/2 + 1) / 8
    p, r = 3 / 8, 2.5 / 8
    assert rows["ext-oracle"]["f1@1"]["mean"] == pytest.approx(100 * 2 * p * r / (p + r))
    # each run's commit, as its run.json records it (this checkout's, or none outside one)
    for name in ("cls-max", "gen-cls-m3h-att"):
        codes = [json.loads((d / "run.json").read_text())["code"] for d in run_dirs(suite["work_dir"], name)]
        assert rows[name]["commits"] == [c["commit"][:7] + ("+modified" if c["modified"] else "") if c["commit"]
                                         else "unrecorded" for c in codes]
    markdown = (table_dir / "table2.md").read_text()
    f1 = rows["cls-max"]["f1@1"]
    assert f"| cls-max | text | {f1['mean']:.2f} ± {f1['std']:.2f}" in markdown
    line = next(line for line in markdown.splitlines() if line.startswith("| cls-max |"))
    assert line.endswith(f" | {', '.join(dict.fromkeys(rows['cls-max']['commits']))} |")
    assert "| cls-butd-max | butd |" in markdown and "skipped: needs butd features" in markdown


def test_figure5_is_the_breakdown_of_the_runs_predictions(suite):
    from model.data import read_split
    from model.metrics import compute_breakdowns, count_keyphrases, read_predictions

    params = {k: v for k, v in suite.items()}
    assert build(Figure5(configs=("cls-max", "gen-cls-m3h-att"), **params))
    out = Path(suite["work_dir"], "paper", "figure5")
    rows = list(csv.DictReader((out / "figure5.csv").open()))
    valid = read_split(suite["shards_dir"], "valid").posts
    gold, sources = [p.keyphrases for p in valid], [" ".join(p.tokens + p.ocr) for p in valid]
    counts = count_keyphrases(p.keyphrases for p in read_split(suite["shards_dir"], "train").posts)
    for name in ("cls-max", "gen-cls-m3h-att"):
        per_seed = [compute_breakdowns(read_predictions(d / "pred_valid.txt"), gold, sources, counts)
                    for d in run_dirs(suite["work_dir"], name)]
        row = next(r for r in rows if r["config"] == name and r["analysis"] == "presence" and r["bucket"] == "present")
        assert float(row["mean"]) == pytest.approx(sum(b["present"]["f1@1"] for b in per_seed) / 2)
        buckets = [r["bucket"] for r in rows if r["config"] == name and r["analysis"] == "keyphrase_frequency"]
        assert buckets == list(per_seed[0]["keyphrase_frequency"])
    for stem in ("present_absent", "keyphrase_frequency", "post_length"):
        with Image.open(out / f"{stem}.png") as image:
            assert image.format == "PNG" and image.size == (640, 400)
        assert (out / f"{stem}.svg").read_text().lstrip().startswith("<?xml")


def test_attention_maps_sum_to_one_per_head_and_page(suite):
    assert build(Attention(config_name="gen-cls-m3h-att", seed=1, n_posts=2, **suite))
    pages = list(Path(suite["work_dir"], "paper").glob("attention-gen-cls-m3h-att-o*-s1"))
    assert len(pages) == 1
    out = pages[0]
    explanations = json.loads((out / "attention.json").read_text())
    assert [e["post_id"] for e in explanations] == ["valid-0", "valid-2"]    # the first two posts with an image
    for e in explanations:
        # text -> vision (49 VGG regions), vision -> text and attributes -> text (the post's words), text -> attributes
        assert set(e["attention"]) == {"text->vision", "text->attributes", "vision->text", "attributes->text"}
        assert len(e["attention"]["vision->text"]) == OVERRIDES["text_layers"]
        for key, layers in e["attention"].items():
            for heads in layers:
                assert len(heads) == OVERRIDES["heads"]
                for weights in heads:
                    assert sum(weights) == pytest.approx(1.0, abs=1e-5)
                    assert len(weights) == {"vision": 49, "text": len(e["tokens"]),
                                            "attributes": len(e["attributes"])}[key.split("->")[1]]
        with Image.open(out / f"{e['post_id']}.png") as image:
            assert image.format == "PNG" and image.size == (260 * OVERRIDES["heads"], 260 * 4)
    page = (out / "index.html").read_text()
    assert '<img src="valid-0.png">' in page and "gold: football" in page


def test_cmkp_explain_draws_one_post(suite, tmp_path):
    from click.testing import CliRunner
    from model.explain import main

    run = run_dirs(suite["work_dir"], "gen-cls-m3h-att")[0]
    png, weights = tmp_path / "post.png", tmp_path / "post.json"
    result = CliRunner().invoke(main, ["--model", str(run), "--data", suite["shards_dir"], "--split", "valid",
                                       "--post", "valid-1", "--out", str(png), "--weights", str(weights)])
    assert result.exit_code == 0, result.output
    explanation = json.loads(weights.read_text())
    # post 1 has no image: only the text <-> attributes pairs are drawn
    assert set(explanation["attention"]) == {"text->attributes", "attributes->text"}
    with Image.open(png) as image:
        assert image.size == (260 * OVERRIDES["heads"], 260 * 2)
    result = CliRunner().invoke(main, ["--model", str(run), "--data", suite["shards_dir"], "--split", "valid",
                                       "--post", "nope", "--out", str(png)])
    assert result.exit_code != 0 and "no post 'nope'" in result.output


def test_block_attention_is_what_the_block_applies():
    import torch
    import torch.nn.functional as F
    from model.explain import block_attention
    from model.model import QueryBlock

    torch.manual_seed(0)
    block = QueryBlock(8, 2, 4, 0.0).eval()
    query, memory = torch.randn(3, 8), torch.randn(3, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    weights = block_attention(block, query, memory, mask)                 # [3, 2, 5]
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2))
    assert (weights[0, :, 3:] == 0).all()
    v = block.v(memory).view(3, 5, 2, 4).transpose(1, 2)
    q = block.q(query).view(3, 2, 1, 4)
    k = block.k(memory).view(3, 5, 2, 4).transpose(1, 2)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :]).squeeze(2)
    torch.testing.assert_close((weights.unsqueeze(-1) * v).sum(2), expected)


def test_report_gathers_what_exists(suite):
    assert build(Report(work_dir=suite["work_dir"]))
    report = Path(suite["work_dir"], "report.md").read_text()
    table2 = (Path(suite["work_dir"], "paper", "table2", "table2.md")).read_text()
    assert table2 in report and "## Table 3" not in report
    assert "![present_absent](paper/figure5/present_absent.png)" in report
    assert "/index.html)" in report


@pytest.fixture
def config_trainer(tmp_path):
    script = tmp_path / "config_train.py"
    script.write_text(CONFIG_TRAINER)
    return f"{sys.executable} {script}"


def test_table3_grid_layout_and_heatmap(tmp_path, config_trainer):
    shards = tiny_shards(tmp_path / "shards")
    task = Table3(shards_dir=str(shards), work_dir=str(tmp_path / "work"), trainer=config_trainer, seeds=(1, 2),
                  layers=(1, 2), heads=(2, 4), head_dims=(64,))
    assert build(task)
    out = Path(task.output().path)
    table = json.loads((out / "table3.json").read_text())
    cells = {(r["layers"], r["heads"], r["head_dim"]): r for r in table["rows"]}
    assert sorted(cells) == [(1, 2, 64), (1, 4, 64), (2, 2, 64), (2, 4, 64)]
    assert cells[2, 4, 64]["f1@1"]["values"] == [25.64, 26.64]            # 20 + 4 + 0.64 + seed
    assert cells[2, 4, 64]["config"].endswith("configs/cls-m3h-att-L2-h4-d64.json")
    config = json.loads(Path(cells[1, 2, 64]["config"]).read_text())
    assert config == {"base": "cls-m3h-att", "text_layers": 1, "heads": 2}   # head_dim 64 is the base's
    markdown = (out / "table3.md").read_text()
    assert "| layers | heads | d = 64 |" in markdown
    assert "| 2 | 4 | **26.14 ± 0.71** |" in markdown and "| 1 | 2 | 14.14 ± 0.71 |" in markdown
    with Image.open(out / "table3.png") as image:
        assert image.format == "PNG" and image.size == (2 * 320, 300)


def test_table4_wording_deltas(tmp_path, config_trainer):
    shards = tiny_shards(tmp_path / "shards")
    work = tmp_path / "work"
    task = Table4(shards_dir=str(shards), work_dir=str(work), trainer=config_trainer, seeds=(1, 2),
                  models=("cls-m3h-att", "gen-m3h-att"))
    assert build(task)
    table = json.loads((Path(task.output().path) / "table4.json").read_text())
    rows = {(r["model"], r["wordings"]): r for r in table["rows"]}
    assert len(rows) == 8
    # f1@3 = 10 + 5 x OCR + 2 x attributes + seed: none 11.5, +OCR 16.5, +attributes 13.5, both 18.5
    for label, mean in (("none", 11.5), ("+OCR", 16.5), ("+attributes", 13.5), ("both", 18.5)):
        assert rows["gen-m3h-att", label]["f1@3"]["mean"] == pytest.approx(mean)
    assert rows["gen-m3h-att", "+OCR"]["delta"]["f1@3"] == pytest.approx(100 * 5 / 11.5)
    assert rows["gen-m3h-att", "none"]["delta"]["f1@3"] is None and rows["gen-m3h-att", "none"]["ttest"]["f1@3"] is None
    # paired over seeds against no wordings: f1@1 does not depend on the wordings (no spread: no p), map@5 neither;
    # f1@3 differs by the same 5 points on both seeds
    ocr = rows["gen-m3h-att", "+OCR"]["ttest"]
    assert ocr["f1@1"]["p"] is None and ocr["map@5"]["p"] is None
    expected = ttest_rel(rows["gen-m3h-att", "+OCR"]["f1@3"]["values"], rows["gen-m3h-att", "none"]["f1@3"]["values"])
    assert ocr["f1@3"]["p"] == pytest.approx(expected.pvalue) and ocr["f1@3"]["beats"] == (expected.pvalue < 0.05)
    # "both" is the named model itself (its own wordings): its runs are runs/<name>/, shared with other tables
    assert rows["cls-m3h-att", "both"]["config"] == "cls-m3h-att" and (work / "runs" / "cls-m3h-att").is_dir()
    markdown = (Path(task.output().path) / "table4.md").read_text()
    assert "| gen-m3h-att | +OCR | " in markdown and "16.50 ± 0.71 | +43.5%" in markdown
    # each line ends with the commits that trained its runs
    line = next(x for x in markdown.splitlines() if x.startswith("| gen-m3h-att | +OCR | "))
    assert line.endswith(f" | {', '.join(dict.fromkeys(rows['gen-m3h-att', '+OCR']['commits']))} |")
    assert rows["gen-m3h-att", "+OCR"]["commits"] and all(rows["gen-m3h-att", "+OCR"]["commits"])
