"""Plain torch modules of LTAD: no Ray, DeepSpeed or S3 in here."""
