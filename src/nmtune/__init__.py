"""nmtune: Noisy Model Learning.

Understand how label noise in a model's pre-training data shapes its features, and adapt
such a model (even a black box that only returns embeddings) to downstream tasks with
NMTune so that it generalises better in-domain and out-of-domain.
"""

__version__ = "0.1.0"
