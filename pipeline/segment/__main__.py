"""`python -m pipeline.segment`: the `cmkp-segment` command."""
from pipeline.segment.cli import main

main()
