"""mstt_lib: the library behind mstt-book, one module per stage of the MSTT-199 pipeline.

``io`` and ``cohort`` (reading and checking cases), ``geometry`` (grids, LPS/RAS, resampling,
planes and display), ``phantom`` (the synthetic cohort),
``registration``, ``preprocess``, ``slices`` (2.5D samples and their cache), ``folds``,
``models`` and ``litemedsam``, ``devices``, ``train``, ``infer`` and ``predict``, ``metrics``,
``evaluate``, ``analysis``, ``qc`` and ``viz`` (figures and viewers); ``params`` (the named
parameter sets), ``pipeline`` (a set's stages: their folders, runs and scores) and ``runner`` (the book);
``engines`` (per-case stages in processes or Ray tasks), ``cluster`` (Ray) and
``distributed`` and ``launch`` (data-parallel training with torchrun).
Modules are imported by name, e.g. ``from mstt_lib import cohort``.
"""
