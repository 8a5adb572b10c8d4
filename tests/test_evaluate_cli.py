"""`cmkp-evaluate` end to end on small files (click's runner, the real command)."""
import json

import pytest
from click.testing import CliRunner

from model.evaluate import main

GOLD = ("i love wildflowers hour today<sep>wildflower hour;spring<sep>http://a\n"
        "nothing here<sep>nothing<sep>http://b\n")
PRED = "spring;wildflowers hour;today\nx\n"


@pytest.fixture
def files(tmp_path):
    gold, pred = tmp_path / "gold_src.txt", tmp_path / "pred.txt"
    gold.write_text(GOLD)
    pred.write_text(PRED)
    return gold, pred


def test_json_keys_match_metrics_json(files):
    gold, pred = files
    result = CliRunner().invoke(main, ["--pred", str(pred), "--gold", str(gold), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    # post 1: hit at rank 1 (spring), R@1 1/2; post 2: miss -> P@1 1/2, R@1 1/4, F1@1 1/3
    # P@3 (2/3 + 0)/2, R@3 (1 + 0)/2 -> F1@3 2/5; AP@5 (1/1 + 2/2)/2 = 1 and 0 -> MAP@5 1/2
    assert out == pytest.approx({"f1@1": 100 / 3, "f1@3": 40.0, "map@5": 50.0})
    assert set(out) == {"f1@1", "f1@3", "map@5"}


def test_plain_gold_file_and_table(tmp_path, files):
    _, pred = files
    plain = tmp_path / "gold.txt"
    plain.write_text("wildflower hour;spring\nnothing\n")
    result = CliRunner().invoke(main, ["--pred", str(pred), "--gold", str(plain)])
    assert result.exit_code == 0, result.output
    header, row = result.output.splitlines()
    assert header.split() == ["F1@1", "F1@3", "MAP@5", "posts"]
    assert row.split() == ["all", "33.33", "40.00", "50.00", "2"]


def test_breakdown_with_train_labels(tmp_path, files):
    gold, pred = files
    train = tmp_path / "train_src.txt"
    train.write_text("p<sep>spring<sep>u\nq<sep>spring;wildflower hour<sep>u\n")
    result = CliRunner().invoke(main, ["--pred", str(pred), "--gold", str(gold), "--breakdown",
                                       "--json", "--train-labels", str(train)])
    assert result.exit_code == 0, result.output
    b = json.loads(result.output)["breakdown"]
    assert b["present"]["num_posts"] == 2 and b["absent"]["num_posts"] == 1
    assert list(b["keyphrase_frequency"]) == ["0", "1-5"]
    assert b["keyphrase_frequency"]["1-5"]["num_posts"] == 1
    assert list(b["post_length"]) == ["0-10"]
    text = CliRunner().invoke(main, ["--pred", str(pred), "--gold", str(gold), "--breakdown"])
    assert text.exit_code == 0
    names = [line.split()[0] for line in text.output.splitlines()[1:]]
    assert names == ["all", "present", "absent", "post_length"]


def test_line_count_mismatch_is_a_clear_error(tmp_path, files):
    gold, _ = files
    pred = tmp_path / "short.txt"
    pred.write_text("spring\n")
    result = CliRunner().invoke(main, ["--pred", str(pred), "--gold", str(gold)])
    assert result.exit_code != 0
    assert "has 1 lines but" in result.output and "has 2" in result.output


def test_breakdown_without_sources_is_an_error(tmp_path, files):
    _, pred = files
    plain = tmp_path / "gold.txt"
    plain.write_text("a\nb\n")
    result = CliRunner().invoke(main, ["--pred", str(pred), "--gold", str(plain), "--breakdown"])
    assert result.exit_code != 0 and "--breakdown needs source texts" in result.output
