"""cmkp's offline dataset pipeline: posts and images in, HDF5 shards out (see docs/FORMAT.md)."""

__version__ = "0.1.0"
