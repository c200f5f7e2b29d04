"""Relevance of a target unit at named layers: LRP (rule chain or modified gradients) or guided backprop."""

# Which rule each backend applies to which layer type: docs/relevance-backends.md.

from vital.relevance.choice import ATTRIBUTION_METHODS, BackendChoice, RelevanceBackend, select_backend
from vital.relevance.engine import RelevanceEngine, relevance_maps

__all__ = ["ATTRIBUTION_METHODS", "BackendChoice", "RelevanceBackend", "RelevanceEngine", "relevance_maps",
           "select_backend"]
