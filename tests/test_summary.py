import json

import h5py

from pipeline.summary import main


def test_summary_prints_counts_shards_and_scores(tmp_path, capsys):
    dataset, run = tmp_path / "ds", tmp_path / "run"
    (dataset / "train").mkdir(parents=True)
    run.mkdir()
    (dataset / "report.json").write_text(json.dumps({"source": "archive", "stages": {
        "crawl": {"read": 10, "kept": 8, "rejected": {"malformed_json": 2}}}}))
    (dataset / "train" / "manifest.json").write_text(json.dumps({
        "posts": 8, "with_image": 7, "with_ocr": 3,
        "shards": [{"file": "shard-00000.h5", "features": ["vgg", "ocr"]}]}))
    h5py.File(dataset / "train" / "shard-00000.h5", "w").close()     # provenance without precision: no line
    (run / "metrics.json").write_text(json.dumps({"valid": {"f1@1": 12.5, "f1@3": 10.0, "map@5": 20.25}}))
    main([str(dataset), str(run)])
    out = capsys.readouterr().out
    assert "crawl          10       8  malformed_json 2" in out
    assert "train      8 posts in 1 shard(s), 7 with image, 3 with OCR; features: ocr, vgg" in out
    assert "valid  F1@1  12.50  F1@3  10.00  MAP@5  20.25" in out and "ran in" not in out


def _demo_outputs(tmp_path):
    """What pipeline.demo leaves behind, written by hand: a dataset with one shard's provenance, a run, timings."""
    from pipeline.demo import DemoConfig

    config = DemoConfig(out=tmp_path)
    (config.dataset / "train").mkdir(parents=True)
    config.run.mkdir()
    stages = {f"stage{i}": {"read": 100 - i, "kept": 90 - i, "rejected": {"reason_a": 6, "reason_b": 4}}
              for i in range(8)}
    (config.dataset / "report.json").write_text(json.dumps({"source": "archive", "stages": stages}))
    (config.dataset / "train" / "manifest.json").write_text(json.dumps({
        "posts": 90, "with_image": 80, "with_ocr": 9, "shards": [{"file": "shard-00000.h5", "features": ["vgg"]}]}))
    reason = "CPU without native bf16 (torch reports AVX2, no AVX512-BF16 or AMX): bf16 would be emulated"
    with h5py.File(config.dataset / "train" / "shard-00000.h5", "w") as f:
        for group in ("vgg", "butd", "attributes"):
            f.attrs[f"{group}_meta"] = json.dumps({"precision": "fp32", "precision_requested": "auto",
                                                   "precision_reason": reason})
    (config.run / "metrics.json").write_text(json.dumps({"valid": {"f1@1": 50.0, "f1@3": 30.0, "map@5": 60.0},
                                                         "test": {"f1@1": 40.0, "f1@3": 20.0, "map@5": 45.5}}))
    config.corpus.mkdir()
    long_text = "a long post " * 20
    (config.corpus / "expected.json").write_text(json.dumps({"new_posts": {
        "new-01": {"text": "Look what I found today", "keyphrase": "cat life"},
        "new-02": {"text": long_text, "keyphrase": "sunset"}}}))
    config.tags.write_text(
        json.dumps({"id": "new-01", "keyphrases": [{"text": "cat life", "score": 0.914}, {"text": "tbt", "score": 0.02}],
                    "modalities": ["text", "ocr", "attributes", "vision"]}) + "\n"
        + json.dumps({"id": "new-02", "rejected": "empty_post", "detail": "no text and no image"}) + "\n")
    lines = [{"step": "corpus", "wall_s": 14.0, "cpu_s": 5.0}]
    lines += [{"step": "pipeline", "task": f"Task{i % 12}", "split": "train", "wall_s": 1.0 + i, "cpu_s": 0.5 * i}
              for i in range(40)]
    lines += [{"step": "pipeline", "wall_s": 300.0, "cpu_s": 550.0}, {"step": "train", "wall_s": 120.0, "cpu_s": 230.0}]
    config.timings.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return config


def test_demo_summary_is_short_and_names_counts_precision_scores_timing_and_the_log(tmp_path):
    from pipeline.summary import demo_summary

    config = _demo_outputs(tmp_path)
    text = demo_summary(config, tmp_path / "demo.log", 450.0)
    lines = text.splitlines()
    assert len(lines) <= 150
    assert "  stage3         97      87  reason_a 6, reason_b 4" in lines
    assert ("  image models ran in vgg fp32, butd fp32, attributes fp32 (auto: CPU without native bf16 (torch "
            "reports AVX2, no AVX512-BF16 or AMX): bf16 would be emulated)") in lines
    assert "  test   F1@1  40.00  F1@3  20.00  MAP@5  45.50" in lines
    # The tagged new posts: text, modalities, ranked keyphrases with scores, what the generator meant.
    tagged_at = lines.index(f"new posts tagged ({config.tags}; in brackets: what the sample generator wrote each "
                            f"one about)")
    assert lines[tagged_at + 1:tagged_at + 5] == [
        '  new-01 "Look what I found today"',
        "      text+ocr+attributes+vision -> cat life 0.91, tbt 0.02  [cat life]",
        '  new-02 "' + ("a long post " * 20)[:97] + '..."',
        "      rejected: empty_post (no text and no image)"]
    # Steps in order with wall and CPU seconds; inside the pipeline the costliest task families first, the
    # rest folded into one line; then the total and where the full log is.
    assert "  corpus                          14.0      5.0" in lines
    pipeline_at = lines.index("  pipeline                       300.0    550.0")
    assert lines[pipeline_at + 1] == "    Task3 x4                      88.0     42.0"   # i = 3, 15, 27, 39
    assert lines[pipeline_at + 8] == "    Task8 x3                      63.0     30.0"
    assert lines[pipeline_at + 9] == "    4 other task families        222.0    105.0"   # Task4..Task7
    assert lines[pipeline_at + 10] == "  train                          120.0    230.0"
    assert lines[-2] == "  total                          450.0" and lines[-1] == f"full log: {tmp_path / 'demo.log'}"
