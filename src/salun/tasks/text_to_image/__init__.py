"""The ``text_to_image`` task: concept or class erasure from a Stable-Diffusion-style pipeline.

- :mod:`.text_to_image_objective`: the objective methods call (:class:`TextToImageTask`);
- :mod:`.text_to_image_task`: the registered task (:class:`TextToImage`);
- :mod:`.text_to_image_runs`: its own runs (prepare, mask, unlearn, sample, evaluate);
- :mod:`.text_to_image_io`: diffusers pipeline I/O (load, save, the tiny offline pipeline).
"""
