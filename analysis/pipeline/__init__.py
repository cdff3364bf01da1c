"""The pipeline: the stage graph and its keys, the run, executors and provenance."""
