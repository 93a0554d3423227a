"""Pure algorithms on arrays: kNN graph, similarities, clustering, constraints, NP3, samplers, metrics.

Imports only numpy, scipy, scikit-learn and faiss: no Flask, Redis or torch.
"""
