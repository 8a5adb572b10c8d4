"""cmkp's offline dataset pipeline: posts and images in, HDF5 shards out (see docs/FORMAT.md)."""

__version__ = "0.1.0"

from pipeline.project_files import read_project_luigi_config  # noqa: E402

read_project_luigi_config()
