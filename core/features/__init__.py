"""Local feature extractors, one module each, created by name through ``core.registry``."""
