"""Relevance of a target channel at named layers: LRP (z+ with relevance splitting), restricted LRP, guided backprop."""

from vital.relevance.lrp import METHODS, RelevanceEngine, relevance_maps

__all__ = ["METHODS", "RelevanceEngine", "relevance_maps"]
