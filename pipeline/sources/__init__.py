"""Where posts come from. Each source yields post records (plain dicts, see `pipeline.text_tasks`) and
reports every line it could not use to a `pipeline.report.StageLog`, so nothing is dropped silently.

- `archive`: twarc2 JSONL pages or flattened tweets, with a `media/` directory of images.
- `api`: the X/Twitter API v2 search endpoint (recent or full archive), resumable.
- `ids`: a file of tweet ids hydrated through the same API client.
- `cmkp`: the authors' release format (already tokenized, split and segmented).
- `posts`: plain JSONL or CSV rows of id, text and an optional image (for tagging new posts).
"""

SOURCES = ("archive", "api", "ids", "cmkp", "posts")
