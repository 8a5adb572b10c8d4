"""Command-line entry points: `cmkp-train`, `cmkp-predict` and `cmkp-tag` (declared in setup.cfg)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import torch

from model.config import CONFIGS, DEFAULT_CONFIG, load_config


def _threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)


@click.command(help="Train on the `train` split, select on `valid`, evaluate on every other split. Writes "
                    "RUN_DIR/model.pt, metrics.json, pred_<split>.txt, train.log (one JSON line per epoch), run.json and "
                    "training_state.pt (what --resume continues).")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="dataset directory written by the pipeline (docs/FORMAT.md)")
@click.option("--config", "config_name", default=DEFAULT_CONFIG, show_default=True,
              help=f"a configuration name ({', '.join(CONFIGS)}) or a JSON file of config fields")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="run directory")
@click.option("--epochs", type=int, default=None, help="maximum epochs (default: the config's)")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--glove", type=click.Path(exists=True, dir_okay=False), default=None,
              help="GloVe text file to initialise the word embeddings (random otherwise)")
@click.option("--allow-random-features", is_flag=True,
              help="accept image features computed with seeded random weights (smoke tests only)")
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
@click.option("--batch-size", type=int, default=None, help="default: the config's (64)")
@click.option("--quiet", is_flag=True, help="no progress bar")
@click.option("--resume", is_flag=True,
              help="continue the run of RUN_DIR from its last finished epoch (RUN_DIR/training_state.pt) with the "
                   "same config and seed; without it an earlier run's files in RUN_DIR are removed first")
@click.option("--on-nonfinite", type=click.Choice(["stop", "skip"]), default=None,
              help="a batch with a non-finite loss or gradient stops the run, or is skipped and counted "
                   "(default: the config's, stop)")
def train(data_dir, config_name, out_dir, epochs, seed, device, glove, allow_random_features, threads,
          batch_size, quiet, resume, on_nonfinite):
    from model.train import train as run_training
    _threads(threads)
    try:
        config = load_config(config_name, epochs=epochs, batch_size=batch_size, on_nonfinite=on_nonfinite)
        run_training(config, data_dir, out_dir, seed=seed, device=device, glove=glove,
                     allow_random_features=allow_random_features, progress=not quiet, resume=resume,
                     log=lambda msg: click.echo(msg, err=True))
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise click.ClickException(str(e)) from e


@click.command(help="Write one line per post of a split: its ranked keyphrases joined by ';'.")
@click.option("--model", "model_paths", required=True, multiple=True,
              type=click.Path(exists=True, dir_okay=False),
              help="checkpoint (RUN_DIR/model.pt); repeated: an ensemble of seeds of one configuration, ranked by "
                   "the mean of their ranking scores")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--split", default="test", show_default=True)
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--beam", type=int, default=None, help="beam size (default: the model's config, 10)")
@click.option("--metrics", is_flag=True, help="also print F1@1, F1@3, MAP@5 against the split's keyphrases")
def predict(model_paths, data_dir, split, out_file, device, threads, batch_size, beam, metrics):
    from model.data import PostDataset, read_split
    from model.metrics import HEADLINE
    from model.train import (check_one_configuration, load_checkpoint, predict_ensemble, resolve_device, score,
                             write_predictions)
    _threads(threads)
    try:
        dev = resolve_device(device)
        models = [load_checkpoint(path, dev) for path in model_paths]
        check_one_configuration(models, list(model_paths))
        for model in models:
            if beam:
                model.config.beam = beam
        data = read_split(data_dir, split)
        dataset = PostDataset(data, models[0].vocabs, models[0].config)
        predictions = predict_ensemble(models, dataset, dev, batch_size)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise click.ClickException(str(e)) from e
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    write_predictions(Path(out_file), predictions)
    click.echo(f"{len(predictions)} posts -> {out_file}", err=True)
    if metrics:
        m = score(predictions, data)
        json.dump({k: m[k] for k in HEADLINE}, sys.stdout)
        click.echo()


def _stdin_posts(directory: Path) -> Path:
    """Standard input as a posts JSONL file: JSON lines as they are, any other line the text of a post whose id
    is its line number."""
    path = directory / "stdin.jsonl"
    with open(path, "w", encoding="utf-8") as out:
        for number, line in enumerate(sys.stdin, 1):
            if line.strip() and not line.lstrip().startswith("{"):
                line = json.dumps({"id": str(number), "text": line.rstrip("\n")}, ensure_ascii=False) + "\n"
            out.write(line)
    return path


@click.command(help="Tag new posts with a trained run, without a scheduler: one JSON line per post read, "
                    "{id, keyphrases: [{text, score}], modalities} or {id, rejected, detail}. Input: a .jsonl or "
                    ".csv file of id, text and optionally image (a path or an http(s) URL), or - for standard "
                    "input (JSON lines, or lines of plain text).")
@click.option("--model", "run_dirs", required=True, multiple=True, type=click.Path(exists=True, file_okay=False),
              help="the run directory (cmkp-train --out); repeated: an ensemble of seeds of one configuration, "
                   "ranked by the mean of their ranking scores")
@click.option("--input", "input_file", default="-", show_default=True, help="posts file, or - for standard input")
@click.option("--out", "out_file", default="-", show_default=True, help="output JSONL file, or - for standard output")
@click.option("--top", type=int, default=10, show_default=True, help="keyphrases per post")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--score", is_flag=True, help="print F1@1, F1@3, MAP@5 against the posts' own trailing hashtags "
                                            "(to standard error)")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--ocr-workers", type=int, default=0, help="OCR processes (default: all cores)")
@click.option("--threads", type=int, default=None)
@click.option("--locate", "locate", multiple=True, metavar="NAME=PATH",
              help="where something the run points to outside itself is now, when its recorded path is gone, "
                   "checked by sha256: attributes=PREDICTOR.pt, text_embedding=ENCODER_DIR, ocr=TESSDATA_DIR, "
                   "vgg=VGG16.pth, butd=DETECTOR.pth, segmenter:NAME=FILE (repeatable)")
def tag(run_dirs, input_file, out_file, top, device, score, batch_size, ocr_workers, threads, locate):
    import tempfile

    from model.provenance import FeaturisationError
    from model.tagging import Tagger, score as score_results
    from pipeline.report import StageLog
    from pipeline.sources.posts import read_posts
    from pipeline.weights import WeightsNotFoundError

    _threads(threads)
    placed = dict(item.split("=", 1) for item in locate if "=" in item)
    if len(placed) != len(locate) or not all(placed.values()):
        raise click.BadParameter(f"{list(locate)}: each is NAME=PATH, each NAME once", param_hint="--locate")
    try:
        tagger = Tagger.load(list(run_dirs), device=device, batch_size=batch_size, ocr_workers=ocr_workers,
                             locate=placed)
    except (FeaturisationError, WeightsNotFoundError, FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    with tagger, tempfile.TemporaryDirectory() as tmp:
        source, base = (_stdin_posts(Path(tmp)), Path.cwd()) if input_file == "-" else (input_file, None)
        log = StageLog("crawl")
        try:
            records = list(read_posts(source, log, base=base))
        except (FileNotFoundError, ValueError) as e:
            raise click.ClickException(str(e)) from e
        posts = [{"id": r["id"], "text": r["text"],
                  "image": (r["media"][0]["file"] or r["media"][0]["url"]) if r["media"] else None} for r in records]
        results = tagger.tag(posts, top=top)
        lines = results + [{"id": r["id"], "rejected": r["reason"], "detail": r["detail"]} for r in log.rejects]
        out = sys.stdout if out_file == "-" else open(out_file, "w", encoding="utf-8")
        try:
            for line in lines:
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
        finally:
            if out is not sys.stdout:
                out.close()
    click.echo(f"{log.read} posts read: {len(results)} tagged, {len(log.rejects)} rejected"
               + (f" ({dict(log.rejected)})" if log.rejects else "")
               + "".join(f"; {note}" for note in tagger.notes), err=True)
    if score:
        click.echo(json.dumps(score_results(results)), err=True)


# `python -m model.cli train ...`: the form torchrun launches (`torchrun --nproc-per-node N -m model.cli train ...`)
main = click.Group(commands={"train": train, "predict": predict, "tag": tag})

if __name__ == "__main__":
    main()
