"""Computer vision for featureloc: images, features, matching, verification, maps, estimation.

Nothing in this package knows about Celery or SQL; workers and interfaces build on it.
"""
