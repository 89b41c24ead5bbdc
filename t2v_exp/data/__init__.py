"""Data: PyAV video I/O, the synthetic shapes set, and the clip datasets the engine instantiates.

Modules (imported directly, so ``import t2v_exp.data`` stays cheap):

- ``video_io``: ``write_video``, ``read_clip`` (keyframe seek + sparse decode), ``probe_video``.
- ``shapes``: seeded synthetic clips with ground truth (``generate_shapes``).
- ``datasets``: ``ClipDataset``/``IndexedClipDataset`` bases and ``ShapesDataset`` (the default).
- ``folder``, ``public_sets``: video_folder/anime, SSv2, UBC Fashion, MSR-VTT.
- ``sources``: metadata readers; ``index``: the per-file probe cache; ``bad_data``: skip/report rules.
- ``buckets``: optional (frames, H, W) bucketing; ``schemas``: typed configs for ``conf/dataset``.

Every dataset takes ``split`` and ``report_dir`` keywords, returns ``{"video", "prompt", "key"}``
items whose randomness depends only on (seed, epoch, index), and has ``set_epoch`` and ``captions``.
"""
