"""Backbone networks, one module per family."""
