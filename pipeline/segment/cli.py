"""`cmkp-segment`: hashtags on stdin, one segmentation per line on stdout."""
from __future__ import annotations

import sys

import click

from pipeline.segment.mappings import default_mapping_file
from pipeline.segment.segmenter import build_segmenter


@click.command()
@click.option("--stats-from", "stats_from", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Text corpus (one post per line) or CMKP *_src.txt whose word counts join the statistics.")
@click.option("--learn-from", "learn_from", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="CMKP *_src.txt whose segmented keyphrases become mapping entries.")
@click.option("--mapping", "mapping_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="TSV of hashtag<TAB>segmentation, applied after the project's own list.")
@click.option("--rerank/--no-rerank", default=None,
              help="Choose among the search's candidates with a reranker trained on the --learn-from keyphrases "
                   "(default: whenever they give it enough examples).")
def main(stats_from, learn_from, mapping_files, rerank):
    """Segment hashtags read one per line on stdin (`#` optional, any case); one segmentation per line out."""
    segmenter = build_segmenter(stats_from=stats_from, learn_from=learn_from,
                                mappings=(default_mapping_file(), *mapping_files), rerank=rerank)
    for line in sys.stdin:
        sys.stdout.write(segmenter.segment(line.strip()) + "\n")
