"""The jobs users run, in Python: segment, annotate (locally or on Ray), edit, granularity / segment-everything,
result and dataset writers, the run manifest, the benchmark. Tasks build pipelines by adapter name."""
