"""`cmkp-evaluate`: score a prediction file against gold keyphrases with the authors' rules.

    cmkp-evaluate --pred pred_valid.txt --gold valid_src.txt [--json] [--breakdown]
                  [--source FILE] [--ocr FILE] [--train-labels FILE]

The gold file is a CMKP `*_src.txt` (keyphrases in the second `<sep>` field; its first field is the
source text for the present/absent and post-length breakdowns) or one `;`-joined line per post
(then `--source` gives the source text). `--train-labels` (a CMKP `*_src.txt` or `;`-lines file of
the training split) enables the keyphrase-frequency breakdown.
"""
from __future__ import annotations

import json

import click

from model.metrics import (HEADLINE, compute_breakdowns, compute_metrics, count_keyphrases, read_gold,
                           read_predictions, read_sources)


def format_report(metrics: dict, breakdowns: dict | None = None) -> str:
    """One row per group: F1@1, F1@3, MAP@5 and the number of posts it covers."""
    rows = [("all", metrics)]
    for name, section in (breakdowns or {}).items():
        if "num_posts" in section:  # present / absent: one metric dict
            rows.append((name, section))
        else:  # bucketed: one metric dict per bucket
            rows.extend((f"{name} {bucket}", scores) for bucket, scores in section.items())
    width = max(len(name) for name, _ in rows) + 2
    lines = [f"{'':<{width}}{'F1@1':>6}  {'F1@3':>6}  {'MAP@5':>6}  {'posts':>6}"]
    for name, scores in rows:
        # a group with no posts has no scores
        values = "  ".join(f"{scores.get(k, float('nan')):6.2f}" for k in HEADLINE)
        lines.append(f"{name:<{width}}{values}  {scores['num_posts']:>6}")
    return "\n".join(lines)


@click.command()
@click.option("--pred", "pred_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Predictions: one line per post, ranked keyphrases joined by ';'.")
@click.option("--gold", "gold_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Gold: a CMKP *_src.txt file or one ';'-joined line per post.")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"f1@1":..,"f1@3":..,"map@5":..} (percent) as JSON, as in metrics.json.')
@click.option("--breakdown", is_flag=True,
              help="Add the paper's Fig. 5 breakdowns: present/absent, post length, keyphrase "
                   "frequency (with --train-labels).")
@click.option("--source", "source_path", type=click.Path(exists=True, dir_okay=False),
              help="Source texts, one line per post (a CMKP *_src.txt or plain text); "
                   "default: the gold file's first field when it is in CMKP format.")
@click.option("--ocr", "ocr_path", type=click.Path(exists=True, dir_okay=False),
              help="OCR tokens, one line per post, appended to the source text (as the model saw it).")
@click.option("--train-labels", "train_path", type=click.Path(exists=True, dir_okay=False),
              help="Training gold (CMKP *_src.txt or ';' lines) for the keyphrase-frequency buckets.")
def main(pred_path, gold_path, as_json, breakdown, source_path, ocr_path, train_path):
    """Score PRED against GOLD: F1@1, F1@3 and MAP@5 in percent, the CMKP authors' evaluator."""
    try:
        predictions = read_predictions(pred_path)
        gold = read_gold(gold_path)
        if len(predictions) != len(gold.keyphrases):
            raise click.ClickException(
                f"{pred_path} has {len(predictions)} lines but {gold_path} has "
                f"{len(gold.keyphrases)}: the files must have one line per post, in the same order")
        sources = None
        if source_path is not None:
            sources = read_sources(source_path, ocr_path)
        elif gold.sources is not None:
            sources = read_sources(gold_path, ocr_path)
        elif ocr_path is not None:
            raise click.ClickException("--ocr needs source texts: --source, or a CMKP gold file")
        if sources is not None and len(sources) != len(predictions):
            raise click.ClickException(f"{len(sources)} source lines for {len(predictions)} posts")
        metrics = compute_metrics(predictions, gold.keyphrases)
        breakdowns = None
        if breakdown:
            label_counts = count_keyphrases(read_gold(train_path).keyphrases) if train_path else None
            if sources is None and label_counts is None:
                raise click.ClickException(
                    "--breakdown needs source texts (--source or a CMKP gold file) or --train-labels")
            breakdowns = compute_breakdowns(predictions, gold.keyphrases, sources, label_counts)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        out = {k: metrics[k] for k in HEADLINE}
        if breakdowns is not None:
            out["breakdown"] = breakdowns
        click.echo(json.dumps(out, indent=2))
    else:
        click.echo(format_report(metrics, breakdowns))


if __name__ == "__main__":
    main()
