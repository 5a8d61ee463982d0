"""Matchers: one module each, created by name through ``core.registry``."""
