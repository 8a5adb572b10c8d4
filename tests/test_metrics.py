"""The evaluator against hand-computed cases (rules: the CMKP authors' evaluator, as model/metrics.py states them)."""

import pytest

from model.metrics import (bucket_label, compute_breakdowns, compute_metrics, count_keyphrases,
                           parse_gold_line, parse_prediction_line, read_gold, read_predictions,
                           read_sources, stem_predictions)


# Four posts; per-post values worked out by hand in the comments.
PREDICTIONS = [
    # stems: (wildflow hour) twice -> second dropped; n = 2, hits [1, 0], n_gold = 1
    # P@1 1, R@1 1; P@3 1/2 (m = 2, no padding penalty), R@3 1; AP@5 1
    ["wildflower hours", "wildflower hour", "nature"],
    # '<unk> cup' dropped; n = 3: world cup, footbal, soccer; hits [1, 0, 1], n_gold = 2
    # P@1 1, R@1 1/2; P@3 2/3, R@3 1; AP@5 (1/1 + 2/3) / 2 = 5/6
    ["<unk> cup", "world cup", "football", "soccer"],
    # an empty line: one prediction '' that never matches; all 0
    parse_prediction_line("\n"),
    # n = 6, hits [1, 1, 0, 0, 0, 1], n_gold = 3
    # P@1 1, R@1 1/3; P@3 2/3, R@3 2/3; AP@5 (1/1 + 2/2) / 3 = 2/3 (the rank-6 hit is past 5)
    ["music", "art", "love", "photo", "life", "kca"],
]
GOLD = [["wildflower hour"], ["soccer", "world cup"], ["kca"], ["kca", "music", "art"]]


def test_hand_computed_scores():
    m = compute_metrics(PREDICTIONS, GOLD)
    assert m["num_posts"] == 4
    assert m["p@1"] == pytest.approx(100 * 3 / 4)
    assert m["r@1"] == pytest.approx(100 * 11 / 24)
    assert m["f1@1"] == pytest.approx(100 * 33 / 58)  # 2 (3/4)(11/24) / (3/4 + 11/24)
    assert m["p@3"] == pytest.approx(100 * 11 / 24)
    assert m["r@3"] == pytest.approx(100 * 2 / 3)
    assert m["f1@3"] == pytest.approx(100 * 44 / 81)
    assert m["map@5"] == pytest.approx(100 * 5 / 8)  # (1 + 5/6 + 0 + 2/3) / 4


def test_f1_is_harmonic_mean_of_averages_not_mean_of_per_post_f1():
    # per-post F1@1: 1, 2/3, 0, 1/2 -> their mean is 13/24 = 54.17 %, the evaluator gives 56.90 %
    per_post = [compute_metrics([p], [g])["f1@1"] for p, g in zip(PREDICTIONS, GOLD)]
    assert per_post == pytest.approx([100, 200 / 3, 0, 50])
    assert sum(per_post) / 4 == pytest.approx(100 * 13 / 24)
    assert compute_metrics(PREDICTIONS, GOLD)["f1@1"] == pytest.approx(100 * 33 / 58)


def test_duplicate_gold_counted_once_and_never_capped_at_k():
    # gold stems to (run) twice -> n_gold = 2 (walk, run), not 3; 1 hit at rank 1 -> R@1 = 1/2
    m = compute_metrics([["running"]], [["runs", "running", "walk"]])
    assert m["r@1"] == pytest.approx(50.0)
    assert m["p@1"] == pytest.approx(100.0)
    assert m["map@5"] == pytest.approx(50.0)


def test_prediction_filtering_rules():
    # duplicates after stemming keep the first; tokens '<unk>', ',' and '.' drop the prediction;
    # the duplicate key is the tokens joined by '_' (so 'a_b' and 'a b' are duplicates)
    assert stem_predictions(["Cats", "cat", "a , b", "x .", "<unk>", "a_b", "a b", "dogs"]) == [
        ("cat",), ("a_b",), ("dog",)]
    # no predictions at all scores 0 without dividing by zero
    m = compute_metrics([[]], [["cat"]])
    assert (m["p@1"], m["r@1"], m["f1@1"], m["map@5"]) == (0.0, 0.0, 0.0, 0.0)


def test_line_count_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 prediction lists for 1 gold"):
        compute_metrics([["a"], ["b"]], [["a"]])


SOURCES = ["i love wildflowers hour today", "nothing here"]
BREAKDOWN_PREDICTIONS = [["spring", "wildflowers hour", "today"], ["x"]]
BREAKDOWN_GOLD = [["wildflower hour", "spring"], ["nothing"]]


def test_present_absent_split_gold_and_predictions():
    m = compute_metrics(BREAKDOWN_PREDICTIONS, BREAKDOWN_GOLD, SOURCES)
    # present: post 1 -> preds [wildflow hour, today], gold [wildflow hour]: P@1 1, P@3 1/2, R 1;
    #          post 2 -> gold [noth], no present predictions: all 0
    assert m["num_posts_present"] == 2
    assert m["p@1_present"] == pytest.approx(50.0)
    assert m["r@3_present"] == pytest.approx(50.0)
    assert m["f1@3_present"] == pytest.approx(100 / 3)  # P 1/4, R 1/2
    assert m["map@5_present"] == pytest.approx(50.0)
    # absent: only post 1 has an absent gold keyphrase (spring), predicted at its rank 1
    assert m["num_posts_absent"] == 1
    assert m["f1@1_absent"] == pytest.approx(100.0)
    # overall scores are unchanged by passing sources
    assert m["f1@1"] == compute_metrics(BREAKDOWN_PREDICTIONS, BREAKDOWN_GOLD)["f1@1"]


def test_frequency_and_length_breakdowns():
    counts = {"Wildflower hour": 3, "wildflower hours": 2, "spring": 20}  # stems merge: 5
    b = compute_breakdowns(BREAKDOWN_PREDICTIONS, BREAKDOWN_GOLD, SOURCES, counts,
                           length_edges=(3,))
    freq = b["keyphrase_frequency"]
    assert list(freq) == ["0", "1-5", "6-20"]
    assert freq["0"]["num_posts"] == 1 and freq["0"]["p@1"] == 0.0  # post 2: nothing / x
    assert freq["1-5"]["num_posts"] == 1 and freq["1-5"]["f1@1"] == pytest.approx(100.0)
    assert freq["6-20"]["num_posts"] == 1 and freq["6-20"]["map@5"] == pytest.approx(100.0)
    length = b["post_length"]
    assert list(length) == ["0-2", "3+"]
    assert length["3+"]["p@1"] == pytest.approx(100.0) and length["3+"]["r@1"] == pytest.approx(50.0)
    assert length["0-2"]["f1@1"] == 0.0
    assert b["present"]["num_posts"] == 2 and b["absent"]["num_posts"] == 1


def test_bucket_labels():
    assert [bucket_label(v, (1, 11)) for v in (0, 1, 10, 11, 500)] == ["0", "1-10", "1-10", "11+",
                                                                        "11+"]


def test_count_keyphrases_counts_posts():
    assert count_keyphrases([["a", "b"], ["a", "a"]]) == {"a": 2, "b": 1}


def test_parsing_helpers(tmp_path):
    assert parse_prediction_line("kp one ; kp two;\n") == ["kp one", "kp two", ""]
    assert parse_gold_line("some post<sep>save hakeem;kca<sep>http://x\n") == (
        ["save hakeem", "kca"], "some post")
    assert parse_gold_line("save hakeem;kca\n") == (["save hakeem", "kca"], None)
    cmkp = tmp_path / "valid_src.txt"
    cmkp.write_text("a b<sep>a<sep>u\nc d<sep>d;c<sep>u\n")
    gold = read_gold(cmkp)
    assert gold.keyphrases == [["a"], ["d", "c"]] and gold.sources == ["a b", "c d"]
    ocr = tmp_path / "ocr.txt"
    ocr.write_text("\nword\n")
    assert read_sources(cmkp, ocr) == ["a b", "c d word"]
    pred = tmp_path / "pred.txt"
    pred.write_text("a;b\n\n")
    assert read_predictions(pred) == [["a", "b"], [""]]
    bad = tmp_path / "bad.txt"
    bad.write_text("a;b\na;;b\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: empty gold keyphrase"):
        read_gold(bad)


def test_real_validation_gold_scores_itself(real_release):
    gold = read_gold(real_release / "valid_src.txt")
    assert len(gold.keyphrases) == 5370
    # the gold list as the ranked prediction: every prediction is a hit
    m = compute_metrics(gold.keyphrases, gold.keyphrases, gold.sources)
    assert m["p@1"] == pytest.approx(100.0) and m["p@3"] == pytest.approx(100.0)
    assert m["map@5"] == pytest.approx(100.0)
    assert m["num_posts_present"] + m["num_posts_absent"] >= 5370
