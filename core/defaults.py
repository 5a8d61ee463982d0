"""Default build settings, in one place for the CLI, workers and benchmarks."""

DEFAULT_EXTRACTOR = "sift"
DEFAULT_RETRIEVER = "exhaustive"
