"""Development tooling that users of the library never import: local services for the demo and the
tests, and the generators of the documentation's figures."""
