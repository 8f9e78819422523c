"""Feature engines behind one interface: what an engine needs, the columns it gives, its memory
estimate and its provenance (pyradiomics' fast path, IBSI mode, ONNX models, ...).

An engine is a pure function of an image, its masks and its settings; it knows nothing of
Dask or of the store.
"""
