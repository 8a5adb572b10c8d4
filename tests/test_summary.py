import json

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
    (run / "metrics.json").write_text(json.dumps({"valid": {"f1@1": 12.5, "f1@3": 10.0, "map@5": 20.25}}))
    main([str(dataset), str(run)])
    out = capsys.readouterr().out
    assert "crawl          10       8  malformed_json 2" in out
    assert "train      8 posts in 1 shard(s), 7 with image, 3 with OCR; features: ocr, vgg" in out
    assert "valid  F1@1  12.50  F1@3  10.00  MAP@5  20.25" in out
