"""The quality study: LTAD against its ablations and a kNN baseline on the synthetic long tail."""
