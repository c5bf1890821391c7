"""Where annotators work: a Label Studio ML backend (:mod:`grounded.integrations.label_studio`) and CVAT
auto-annotation functions (:mod:`grounded.integrations.cvat`, :mod:`grounded.integrations.cvat_interactor`).

Both use one :class:`~grounded.integrations.annotator.Annotator`: the pipeline's detector and SAM-family
segmenter behind a lock, with the segmenter's embedding cache shared by text prompts and clicks.
"""
