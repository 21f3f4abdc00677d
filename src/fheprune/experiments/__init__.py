"""Experiments that reproduce the papers' tables on our code (each writes JSON)."""
