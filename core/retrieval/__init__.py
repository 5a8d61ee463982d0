"""Shortlisting: which references of a map are worth matching against a query."""
