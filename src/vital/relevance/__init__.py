"""Relevance of a target unit at named layers: LRP by a rule chain or by modified gradients, restricted LRP, guided
backprop (docs/relevance-backends.md)."""

from vital.relevance.choice import ATTRIBUTION_METHODS, BackendChoice, RelevanceBackend, select_backend
from vital.relevance.engine import RelevanceEngine, relevance_maps

__all__ = ["ATTRIBUTION_METHODS", "BackendChoice", "RelevanceBackend", "RelevanceEngine", "relevance_maps",
           "select_backend"]
