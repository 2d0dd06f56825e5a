"""The bundled demo corpus (see README.md); `python -m bessemer.corpus.generate` rewrites it."""
