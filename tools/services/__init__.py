"""Local services a laptop or CI run needs: an S3-compatible server (SeaweedFS) and a Ray head."""
