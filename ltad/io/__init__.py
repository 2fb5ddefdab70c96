"""Storage I/O every layer may use: locations (URIs), reads and writes of local paths and `s3://`
objects, and weights files cached per node by content."""
