"""Celery app, tasks and the client that enqueues: the service around ``core``."""
