"""The paper's tables as functions of finished runs: significance tests, the extractive oracle, Markdown.

Inputs are the rows of `workflows.experiments.summarize_runs` (per config: mean, sample std and the per-seed
values of each headline metric, seeds in the order they ran). Nothing here trains or reads shards.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from workflows.experiments import HEADLINE, _cell

ALPHA = 0.05                 # the paper's significance level
LABELS = {"f1@1": "F1@1", "f1@3": "F1@3", "map@5": "MAP@5"}


def paired_ttest(reference: Sequence[float], other: Sequence[float]) -> dict:
    """Two-sided paired t-test (scipy.stats.ttest_rel) of the reference model's per-seed scores against another
    row's, seeds paired in order: {"t", "p", "beats"}; beats = the reference's mean is higher at p < ALPHA.
    With fewer than two pairs, or no spread in the differences where scipy returns NaN, t and p are None."""
    from scipy.stats import ttest_rel

    if len(reference) != len(other):
        raise ValueError(f"a paired test needs the same seeds: {len(reference)} vs {len(other)} scores")
    if len(reference) < 2:
        return {"t": None, "p": None, "beats": False}
    t, p = ttest_rel(reference, other)
    t, p = (None if math.isnan(v) else float(v) for v in (t, p))
    beats = p is not None and p < ALPHA and sum(reference) > sum(other)
    return {"t": t, "p": p, "beats": beats}


def oracle_predictions(gold: Sequence[Sequence[str]], sources: Sequence[str]) -> list[list[str]]:
    """EXT-ORACLE: per post, the gold keyphrases that occur in its source text (stemmed, contiguous, the
    evaluator's rule), in gold order: what the best extractive method could predict. A post without any
    present keyphrase predicts nothing (`[""]`, as an empty prediction line)."""
    from model.metrics import is_present, stem_phrase, stem_token

    out = []
    for keyphrases, source in zip(gold, sources, strict=True):
        tokens = [stem_token(t) for t in source.split()]
        out.append([k for k in keyphrases if is_present(stem_phrase(k), tokens)] or [""])
    return out


def _p_cell(test: dict | None) -> str:
    if not test or test["p"] is None:
        return "–"
    return f"{test['p']:.3f}" if test["p"] >= 0.001 else f"{test['p']:.1e}"


def _code_cell(row: dict) -> str:
    """The distinct commits that trained a row's runs, in seed order (none for EXT-ORACLE, which trains nothing)."""
    return ", ".join(dict.fromkeys(row["commits"]))


def table2_markdown(table: dict) -> str:
    """Table 2: one line per row, mean ± sd over seeds; `*` marks a score the full model beats at p < 0.05
    (paired t-test over seeds); skipped rows say why; `code`: the commits that trained the row's runs."""
    full = table["full_model"]
    lines = [f"Scores on `{table['split']}` (percent), mean ± sample sd over seeds {table['seeds']}. p: paired "
             f"t-test over seeds (two-sided, scipy.stats.ttest_rel) of `{full}` against the row; `*`: `{full}` "
             f"is better at p < {ALPHA}. Dataset feature groups: {', '.join(table['features']) or 'none'}. "
             f"code: the commit each run's run.json records.",
             "",
             "| model | inputs | " + " | ".join(LABELS[k] for k in HEADLINE) + " | "
             + " | ".join(f"p {LABELS[k]}" for k in HEADLINE) + " | note | code |",
             "| --- | --- |" + " ---: |" * (2 * len(HEADLINE)) + " --- | --- |"]
    for row in table["rows"]:
        if row["status"] == "skipped":
            lines.append(f"| {row['row']} | {row['inputs']} |" + " – |" * (2 * len(HEADLINE))
                         + f" skipped: {row['note']} | |")
            continue
        tests = row.get("ttest") or {}
        scores = [_cell(row[k], 2) + (" *" if tests.get(k, {}).get("beats") else "") for k in HEADLINE]
        pvalues = [_p_cell(tests.get(k)) for k in HEADLINE]
        lines.append(f"| {row['row']} | {row['inputs']} | {' | '.join(scores)} | {' | '.join(pvalues)} | "
                     f"{row['note']} | {_code_cell(row)} |")
    return "\n".join(lines) + "\n"


def table3_markdown(table: dict) -> str:
    """Table 3: per metric, rows (layers, heads) and one column per head dimension, as the paper lays it out."""
    cells = {(r["layers"], r["heads"], r["head_dim"]): r for r in table["rows"]}
    layers = sorted({k[0] for k in cells})
    heads = sorted({k[1] for k in cells})
    dims = sorted({k[2] for k in cells})
    out = [f"`{table['base_config']}` with L stacked attention layers, h heads of dimension d; scores on "
           f"`{table['split']}` (percent), mean ± sample sd over seeds {table['seeds']}.", ""]
    for key in HEADLINE:
        out += [f"**{LABELS[key]}**", "", "| layers | heads | " + " | ".join(f"d = {d}" for d in dims) + " |",
                "| ---: | ---: |" + " ---: |" * len(dims)]
        best = max(cells.values(), key=lambda r: r[key]["mean"])
        for n_layers in layers:
            for h in heads:
                row = []
                for d in dims:
                    r = cells.get((n_layers, h, d))
                    text = _cell(r[key], 2) if r else "–"
                    row.append(f"**{text}**" if r is best else text)
                out.append(f"| {n_layers} | {h} | " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out)


def percent_change(value: float, reference: float) -> float | None:
    """(value - reference) / reference in percent; None when the reference is 0."""
    return None if reference == 0 else 100.0 * (value - reference) / reference


def table4_markdown(table: dict) -> str:
    """Table 4: for each model, its scores without image wordings, with OCR, with attributes and with both;
    Δ is the change in percent of the score without wordings, as in the paper; p the paired t-test against it;
    `code`: the commits that trained the row's runs."""
    lines = [f"Image wordings added to each model; scores on `{table['split']}` (percent), mean ± sample sd over "
             f"seeds {table['seeds']}; Δ: change relative to the model without wordings; p: paired t-test over "
             f"seeds (two-sided, scipy.stats.ttest_rel) against it, `*` where the wordings are better at "
             f"p < {ALPHA}. code: the commit each run's run.json records.", "",
             "| model | wordings | " + " | ".join(f"{LABELS[k]} | Δ | p" for k in HEADLINE) + " | code |",
             "| --- | --- |" + " ---: | ---: | ---: |" * len(HEADLINE) + " --- |"]
    for row in table["rows"]:
        cells = []
        for k in HEADLINE:
            delta, test = row["delta"][k], (row.get("ttest") or {}).get(k)
            cells += [_cell(row[k], 2), "–" if delta is None else f"{delta:+.1f}%" + (" *" if test["beats"] else ""),
                      _p_cell(test)]
        lines.append(f"| {row['model']} | {row['wordings']} | " + " | ".join(cells) + f" | {_code_cell(row)} |")
    return "\n".join(lines) + "\n"
