"""Bundled YAML pipelines (importable as ``grounded.pipelines``); load them with ``grounded.load_pipeline``."""
