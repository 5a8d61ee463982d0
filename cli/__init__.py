"""The ``featureloc`` command line: built on core, db and workers, never the reverse."""
