"""The paper's tables and figures as Luigi workflows, on any built dataset:

    luigi --module workflows.paper Table2 --shards-dir OUT --work-dir WORK --local-scheduler
    luigi --module workflows.paper Table3 --layers 1,2 --heads 4,8 --head-dims 64,128 --seeds 1 ...
    luigi --module workflows.paper Table4 --models cls-m3h-att,gen-cls-m3h-att ...
    luigi --module workflows.paper Figure5 --configs gen-cls-m3h-att,gen-copy ...
    luigi --module workflows.paper Attention --config gen-cls-m3h-att --seed 1 --posts ID1,ID2 ...
    luigi --module workflows.paper Report ...

Without --shards-dir a task builds the CMKP benchmark protocol's dataset from --data-dir, as the suites of
workflows/experiments.py do; parameters have their defaults in the Parameters (luigi.cfg overrides).
Every training run is one `workflows.experiments.TrainRun` (WORK/runs/<config>/seed-<S>/), shared by every table that needs it, so a
suite resumes where it stopped and Table 2's full model is also Table 4's. A configuration that differs from
a named one (a Table 3 grid point, a Table 4 wording variant, `--overrides`) is a JSON file written by
`ConfigVariant` under WORK/configs/. Each workflow writes one directory WORK/paper/<name>/ (tables as
Markdown and JSON, figures as PNG/SVG, numbers as CSV); `Report` gathers whichever exist into WORK/report.md.

Which runs a table needs depends on the dataset (Table 2 skips the image-only rows of a dataset without image
features), so the tables ask for their runs from run() as dynamic dependencies, once the dataset exists.
"""
from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import os
import statistics
from pathlib import Path

import luigi

from pipeline.targets import DurableTarget
from workflows.experiments import (HEADLINE, CommaListParameter, ExperimentTask, SeedListParameter, TrainRun,
                                   read_run, run_name, summarize_runs)

FULL_MODEL = "gen-cls-m3h-att"
# The paper's Table 2, in its order: image only, text only, text + image.
TABLE2_ROWS = ("cls-vgg-avg", "cls-vgg-max", "cls-butd-avg", "cls-butd-max",
               "cls-avg", "cls-max", "cls-tmn", "gen-att", "gen-copy", "gen-topic",
               "cls-img-att", "cls-co-att", "cls-ban", "cls-m3h-att", "gen-m3h-att", "gen-cls-m3h-att")
ORACLE = "ext-oracle"
# Table 4's image-wording variants: (label, image_wordings i.e. OCR tokens after <sep>, use_attributes)
WORDINGS = (("none", False, False), ("+OCR", True, False), ("+attributes", False, True), ("both", True, True))


class IntListParameter(CommaListParameter):
    """`1,2,4` -> (1, 2, 4)."""

    def parse(self, x):
        return tuple(int(v) for v in super().parse(x))

    def serialize(self, x):
        return ",".join(str(v) for v in x)


def dataset_features(shards_dir: str | Path) -> set[str]:
    """The feature groups every shard of the dataset holds (the shard attribute `features`)."""
    import h5py

    groups = None
    paths = sorted(Path(shards_dir).glob("*/shard-*.h5"))
    if not paths:
        raise FileNotFoundError(f"no shards under {shards_dir} (expected SPLIT/shard-NNNNN.h5, docs/FORMAT.md)")
    for path in paths:
        with h5py.File(path, "r") as f:
            held = set(json.loads(f.attrs.get("features", "[]")))
        groups = held if groups is None else groups & held
    return groups


def config_inputs(config) -> dict:
    """The feature groups a configuration reads: (required, optional) sets. Image-only models need their
    vision group and a model reading the posts' sentence embeddings their group; every other modality is one
    the model masks out where the dataset lacks it."""
    optional = set()
    if config.vision != "none":
        optional.add(config.vision)
    if config.image_wordings:
        optional.add("ocr")
    if config.use_attributes:
        optional.add("attributes")
    required = {config.vision} if not config.use_text else set()
    if config.uses_text_embedding:
        required.add("text_embedding")
    return {"required": required, "optional": optional - required}


def inputs_label(config) -> str:
    parts = (["text"] if config.use_text else []) + ([config.vision] if config.vision != "none" else [])
    parts += (["OCR"] if config.image_wordings else []) + (["attributes"] if config.use_attributes else [])
    parts += ["text_embedding"] if config.uses_text_embedding else []
    return " + ".join(parts)


class ConfigVariant(luigi.Task):
    """WORK/configs/<name>.json: a named configuration with some fields changed (a `--config` file of
    cmkp-train: {"base": NAME, field: value, ...})."""

    work_dir = luigi.Parameter()
    name = luigi.Parameter()
    base = luigi.Parameter()
    fields = luigi.DictParameter()

    def output(self):
        return DurableTarget(str(Path(self.work_dir, "configs", f"{self.name}.json")))

    def run(self):
        with self.output().temporary_path() as tmp:
            Path(tmp).write_text(json.dumps({"base": self.base, **_plain(self.fields)}, indent=1,
                                            sort_keys=True) + "\n")


def _plain(fields) -> dict:
    return json.loads(json.dumps(dict(fields), default=dict))


class PaperTask(ExperimentTask):
    """Parameters of the paper's workflows; helpers to plan runs and read them."""

    seeds = SeedListParameter(default=(1, 2, 3, 4, 5))
    overrides = luigi.DictParameter(default={}, description="config fields applied to every run (e.g. tiny "
                                    "sizes for a smoke test); runs then get their own names")

    def requires(self):
        return self.shards_task()

    def variant(self, base: str, name: str, fields: dict | None = None) -> tuple[str, ConfigVariant | None]:
        """(the --config of a run, the ConfigVariant task that writes it or None): `base` itself when neither
        `fields` nor the overrides change any of its values, else a file named `name` (suffixed by a hash of
        the overrides, so that changed runs never share a directory with the named ones)."""
        from model.config import CONFIGS, load_config

        if base not in CONFIGS:
            raise ValueError(f"{base!r} is not a configuration name ({', '.join(CONFIGS)})")
        config = load_config(base)
        wanted = {**(fields or {}), **_plain(self.overrides)}
        unknown = sorted(k for k in wanted if not hasattr(config, k))
        if unknown:
            raise ValueError(f"unknown config fields {unknown}")
        changed = {k: v for k, v in wanted.items() if getattr(config, k) != v}
        if not changed:
            return base, None
        if self.overrides:
            digest = hashlib.sha256(json.dumps(_plain(self.overrides), sort_keys=True).encode()).hexdigest()
            name = f"{name}-o{digest[:6]}"
        task = ConfigVariant(work_dir=self.work_dir, name=name, base=base, fields=changed)
        return task.output().path, task

    def train_runs(self, configs: list[str]) -> dict[str, list[TrainRun]]:
        return {c: [TrainRun(config=c, seed=s, **self.experiment_parameters()) for s in self.seeds]
                for c in configs}

    def plan_runs(self, plan: dict[str, tuple[str, ConfigVariant | None]]):
        """Dynamic dependencies of run(): the config files, then every (config, seed) run. Yields tasks; returns
        {key: summarize_runs row} once every run has finished (run() is re-entered by luigi after each yield)."""
        variants = [task for _, task in plan.values() if task is not None]
        if variants:
            yield variants
        runs = self.train_runs(list(dict.fromkeys(config for config, _ in plan.values())))
        yield [task for tasks in runs.values() for task in tasks]
        rows = {}
        for key, (config, _) in plan.items():
            records = [read_run(task, task.output()) for task in runs[config]]
            rows[key] = summarize_runs(records, self.split)[0]
        return rows

    def paper_dir(self, name: str) -> DurableTarget:
        return DurableTarget(str(Path(self.work_dir, "paper", name)))

    def config(self, config_arg: str):
        from model.config import load_config
        return load_config(config_arg)


def _write_dir(target: DurableTarget, files: dict[str, str | bytes]) -> Path:
    """Write every file into a temporary directory renamed to the target: a directory that exists is complete."""
    with target.temporary_path() as tmp:
        os.makedirs(tmp)
        for name, content in files.items():
            mode = "wb" if isinstance(content, bytes) else "w"
            with open(Path(tmp, name), mode) as f:
                f.write(content)
    return Path(target.path)


# ----------------------------------------------------------------------------------------------
# Table 2


class Table2(PaperTask):
    """WORK/paper/table2/: every row the dataset's feature groups allow, over seeds, plus EXT-ORACLE; mean ± sd
    per metric and a paired t-test over seeds of the full model against each row (table2.md, table2.json)."""

    rows = CommaListParameter(default=TABLE2_ROWS)
    full_model = luigi.Parameter(default=FULL_MODEL)

    def output(self):
        return self.paper_dir("table2")

    def run(self):
        features = dataset_features(self.shards_path())
        names = list(dict.fromkeys([*self.rows, self.full_model]))
        plan, table_rows = {}, []
        for name in names:
            config = self.config(name)
            inputs = config_inputs(config)
            row = {"row": name, "inputs": inputs_label(config), "status": "run", "note": ""}
            missing = sorted(inputs["required"] - features)
            if missing:
                row.update(status="skipped", note=f"needs {', '.join(missing)} features, which the dataset "
                                                  f"does not hold")
            else:
                absent = sorted(inputs["optional"] - features)
                row["note"] = f"{', '.join(absent)} absent from the dataset (masked out)" if absent else ""
                plan[name] = self.variant(name, name)
            table_rows.append(row)
        if self.full_model not in plan:
            raise ValueError(f"the full model {self.full_model!r} cannot run on this dataset")
        scores = yield from self.plan_runs(plan)

        from workflows.tables import paired_ttest, table2_markdown
        full = scores[self.full_model]
        for row in table_rows:
            if row["status"] == "run":
                stats = scores[row["row"]]
                row.update({k: stats[k] for k in HEADLINE}, seeds=stats["seeds"], commits=stats["commits"],
                           config=plan[row["row"]][0])
                if row["row"] != self.full_model:
                    row["ttest"] = {k: paired_ttest(full[k]["values"], stats[k]["values"]) for k in HEADLINE}
        table_rows.insert(0, self.oracle_row())
        table = {"split": self.split, "seeds": list(self.seeds), "full_model": self.full_model,
                 "features": sorted(features), "shards": self.shards_path(), "rows": table_rows}
        _write_dir(self.output(), {"table2.json": json.dumps(table, indent=1) + "\n",
                                   "table2.md": table2_markdown(table)})

    def oracle_row(self) -> dict:
        """EXT-ORACLE on the split: the gold keyphrases present in the post's words and OCR tokens."""
        from model.data import read_split
        from model.metrics import compute_metrics
        from workflows.tables import oracle_predictions

        split = read_split(self.shards_path(), self.split)
        gold = [post.keyphrases for post in split.posts]
        sources = [" ".join(post.tokens + post.ocr) for post in split.posts]
        metrics = compute_metrics(oracle_predictions(gold, sources), gold)
        return {"row": ORACLE, "inputs": "text + OCR", "status": "run", "seeds": [],
                "commits": [], "note": "gold keyphrases present in the post or its OCR text",
                **{k: {"mean": metrics[k], "std": None, "values": [metrics[k]]} for k in HEADLINE}}


# ----------------------------------------------------------------------------------------------
# Table 3


class Table3(PaperTask):
    """WORK/paper/table3/: the attention grid, stacked layers x heads x head dimension, of one model
    (table3.md laid out as the paper's, table3.json, table3.png a heatmap of F1@1)."""

    base_config = luigi.Parameter(default="cls-m3h-att")
    layers = IntListParameter(default=(1, 2, 3, 4))
    heads = IntListParameter(default=(2, 4, 8, 12))
    head_dims = IntListParameter(default=(64, 128, 256))

    def output(self):
        return self.paper_dir("table3")

    def grid(self):
        return [(n, h, d) for n in self.layers for h in self.heads for d in self.head_dims]

    def run(self):
        plan = {cell: self.variant(self.base_config, f"{self.base_config}-L{cell[0]}-h{cell[1]}-d{cell[2]}",
                                   {"text_layers": cell[0], "heads": cell[1], "head_dim": cell[2]})
                for cell in self.grid()}
        scores = yield from self.plan_runs(plan)

        from workflows.plots import table3_heatmap
        from workflows.tables import table3_markdown
        rows = [{"layers": n, "heads": h, "head_dim": d, "config": plan[n, h, d][0], "seeds": scores[n, h, d]["seeds"],
                 **{k: scores[n, h, d][k] for k in HEADLINE}} for n, h, d in self.grid()]
        table = {"split": self.split, "seeds": list(self.seeds), "base_config": self.base_config, "rows": rows}
        with self.output().temporary_path() as tmp:
            os.makedirs(tmp)
            Path(tmp, "table3.json").write_text(json.dumps(table, indent=1) + "\n")
            Path(tmp, "table3.md").write_text(table3_markdown(table))
            table3_heatmap(table, Path(tmp, "table3.png"))


# ----------------------------------------------------------------------------------------------
# Table 4


class Table4(PaperTask):
    """WORK/paper/table4/: image wordings (OCR tokens, attributes) added to each model: none, +OCR, +attributes,
    both, with the change in percent of the score without them and a paired t-test over seeds against it
    (table4.md, table4.json)."""

    models = CommaListParameter(default=("cls-m3h-att", "gen-cls-m3h-att"))

    def output(self):
        return self.paper_dir("table4")

    def run(self):
        slug = {"none": "none", "+OCR": "ocr", "+attributes": "attributes", "both": "both"}
        plan = {(model, label): self.variant(model, f"{model}-wordings-{slug[label]}",
                                             {"image_wordings": ocr, "use_attributes": attributes})
                for model in self.models for label, ocr, attributes in WORDINGS}
        scores = yield from self.plan_runs(plan)

        from workflows.tables import paired_ttest, percent_change, table4_markdown
        rows = []
        for (model, label), stats in scores.items():
            reference = scores[model, "none"]
            rows.append({"model": model, "wordings": label, "config": plan[model, label][0], "seeds": stats["seeds"],
                         "commits": stats["commits"], **{k: stats[k] for k in HEADLINE},
                         "delta": {k: None if label == "none" else percent_change(stats[k]["mean"],
                                                                                  reference[k]["mean"])
                                   for k in HEADLINE},
                         "ttest": {k: None if label == "none" else paired_ttest(stats[k]["values"],
                                                                                reference[k]["values"])
                                   for k in HEADLINE}})
        table = {"split": self.split, "seeds": list(self.seeds), "rows": rows}
        _write_dir(self.output(), {"table4.json": json.dumps(table, indent=1) + "\n",
                                   "table4.md": table4_markdown(table)})


# ----------------------------------------------------------------------------------------------
# Figure 5


class Figure5(PaperTask):
    """WORK/paper/figure5/: F1@1 of trained runs on present and absent keyphrases, by the keyphrase's frequency
    in the training split and by post length (mean ± sd over seeds): figure5.csv and bar / line plots as PNG and
    SVG. Present means occurring in the post's words or its OCR tokens, for every model alike."""

    configs = CommaListParameter(default=(FULL_MODEL, "gen-copy", "cls-max"))

    def output(self):
        return self.paper_dir("figure5")

    def run(self):
        plan = {name: self.variant(name, name) for name in self.configs}
        yield from self.plan_runs(plan)

        from model.data import read_split
        from model.metrics import compute_breakdowns, count_keyphrases, read_predictions
        from workflows.plots import bucket_lines, present_absent_bars

        split = read_split(self.shards_path(), self.split)
        gold = [post.keyphrases for post in split.posts]
        sources = [" ".join(post.tokens + post.ocr) for post in split.posts]
        counts = count_keyphrases(post.keyphrases for post in read_split(self.shards_path(), "train").posts)
        per_seed: dict[tuple, list] = {}
        for name, (config, _) in plan.items():
            for task in self.train_runs([config])[config]:
                pred_path = Path(task.output().path).parent / f"pred_{self.split}.txt"
                if not pred_path.exists():
                    raise FileNotFoundError(f"{pred_path}: the run wrote no predictions for {self.split!r}")
                breakdown = compute_breakdowns(read_predictions(pred_path), gold, sources, counts)
                for kind in ("present", "absent"):
                    per_seed.setdefault((name, "presence", kind), []).append(breakdown[kind])
                for analysis in ("keyphrase_frequency", "post_length"):
                    for bucket, scores in breakdown[analysis].items():
                        per_seed.setdefault((name, analysis, bucket), []).append(scores)
        rows = []
        for (name, analysis, bucket), group in per_seed.items():
            values = [s.get("f1@1", 0.0) for s in group]
            rows.append({"config": name, "analysis": analysis, "bucket": bucket, "seeds": len(values),
                         "mean": statistics.fmean(values),
                         "sd": statistics.stdev(values) if len(values) > 1 else None,
                         "posts": group[0]["num_posts"]})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["config", "analysis", "bucket", "seeds", "mean", "sd", "posts"],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        with self.output().temporary_path() as tmp:
            os.makedirs(tmp)
            Path(tmp, "figure5.csv").write_text(buffer.getvalue())
            present_absent_bars(rows, Path(tmp, "present_absent"))
            bucket_lines(rows, "keyphrase_frequency", "times the keyphrase occurs in the training split",
                         Path(tmp, "keyphrase_frequency"))
            bucket_lines(rows, "post_length", "post length (source tokens)", Path(tmp, "post_length"))


# ----------------------------------------------------------------------------------------------
# Attention (Figure 6)


class Attention(PaperTask):
    """WORK/paper/attention-<config>-s<seed>/: for chosen posts of a trained attention model, each head's
    weights over the image regions and over the words (a PNG per post, attention.json with the weights, and
    index.html to browse them with the gold and predicted keyphrases)."""

    config_name = luigi.Parameter(default=FULL_MODEL, description="the trained model's configuration")
    seed = luigi.IntParameter(default=1)
    posts = CommaListParameter(default=(), description="post_ids; empty: the first n_posts posts with an image "
                               "(then those without, where an attention block saw two modalities)")
    n_posts = luigi.IntParameter(default=8)
    layer = luigi.IntParameter(default=-1, description="which stacked attention layer to draw")

    def output(self):
        config, _ = self.variant(self.config_name, self.config_name)
        return self.paper_dir(f"attention-{run_name(config)}-s{self.seed}")

    def run(self):
        config, variant = self.variant(self.config_name, self.config_name)
        if variant is not None:
            yield variant
        trained = yield TrainRun(config=config, seed=self.seed, **self.experiment_parameters())

        from model.data import PostDataset, read_split
        from model.explain import draw, explain, find_post, image_of, load_run
        from model.metrics import read_predictions

        run_dir = Path(trained.path).parent
        model = load_run(run_dir)
        if not model.fusion.stacks:
            raise ValueError(f"{self.config_name} has no attention blocks to explain")
        dataset = PostDataset(read_split(self.shards_path(), self.split), model.vocabs, model.config)
        if self.posts:
            chosen = [explain(model, dataset, find_post(dataset, p)) for p in self.posts]
        else:   # the first posts with an image, else the first posts where some attention block saw two modalities
            with_image = [i for i, p in enumerate(dataset.split.posts) if p.image_present]
            chosen = []
            for i in with_image + [i for i in range(len(dataset)) if i not in set(with_image)]:
                if len(chosen) == self.n_posts:
                    break
                explanation = explain(model, dataset, i)
                if explanation["attention"]:
                    chosen.append(explanation)
        index_of = {p.post_id: i for i, p in enumerate(dataset.split.posts)}
        pred_path = run_dir / f"pred_{self.split}.txt"
        predictions = read_predictions(pred_path) if pred_path.exists() else None
        explanations, sections = [], []
        with self.output().temporary_path() as tmp:
            os.makedirs(tmp)
            for done, explanation in enumerate(chosen):
                index = index_of[explanation["post_id"]]
                image, boxes = image_of(dataset, index, self.shards_path())
                png = f"{run_name(explanation['post_id'])}.png"
                draw(explanation, Path(tmp, png), image, boxes, self.layer)
                explanations.append(explanation)
                predicted = "; ".join(predictions[index]) if predictions else "(no predictions file)"
                sections.append(f"<h2>{html.escape(explanation['post_id'])}</h2>\n"
                                f"<p>{html.escape(' '.join(explanation['tokens']))}</p>\n"
                                f"<p>gold: {html.escape('; '.join(explanation['keyphrases']))}<br>"
                                f"predicted: {html.escape(predicted)}</p>\n<img src=\"{png}\">")
                self.set_progress_percentage(int(100 * (done + 1) / len(chosen)))
            Path(tmp, "attention.json").write_text(json.dumps(explanations) + "\n")
            title = f"Attention heads of {self.config_name}, seed {self.seed}, split {self.split}"
            Path(tmp, "index.html").write_text(
                f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>\n"
                f"<body>\n<h1>{html.escape(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n")


# ----------------------------------------------------------------------------------------------
# Report


class Report(luigi.Task):
    """WORK/report.md: whichever of the workflows' outputs exist under WORK/paper/, tables inline and figures
    linked. It needs none of them: run it after the workflows (delete report.md to gather again)."""

    work_dir = luigi.Parameter(default="build/experiments/cmkp")

    def output(self):
        return DurableTarget(str(Path(self.work_dir, "report.md")))

    def run(self):
        paper = Path(self.work_dir, "paper")
        parts = [f"# Results in {self.work_dir}", ""]
        titles = {"table2": "Table 2: comparison models", "table3": "Table 3: layers, heads and head dimension",
                  "table4": "Table 4: image wordings", "figure5": "Figure 5: present and absent keyphrases, "
                  "keyphrase frequency, post length"}
        for name, title in titles.items():
            directory = paper / name
            if not directory.is_dir():
                continue
            parts += [f"## {title}", ""]
            table = directory / f"{name}.md"
            if table.exists():
                parts += [table.read_text(), ""]
            for image in sorted(directory.glob("*.png")):
                parts += [f"![{image.stem}](paper/{name}/{image.name})", ""]
            for data in sorted(directory.glob("*.csv")):
                parts += [f"Numbers: [{data.name}](paper/{name}/{data.name})", ""]
        attention = sorted(paper.glob("attention-*/index.html")) if paper.is_dir() else []
        if attention:
            parts += ["## Figure 6: attention heads", ""]
            parts += [f"- [{page.parent.name}](paper/{page.parent.name}/index.html)" for page in attention] + [""]
        if len(parts) == 2:
            parts.append(f"No workflow output under {paper} yet.")
        with self.output().temporary_path() as tmp:
            Path(tmp).write_text("\n".join(parts).rstrip() + "\n")
