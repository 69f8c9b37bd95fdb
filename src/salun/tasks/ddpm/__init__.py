"""The ``ddpm`` task: class erasure from a class-conditional DDPM with classifier-free guidance.

- :mod:`.ddpm_objective`: the noise-prediction objective methods call (:class:`DiffusionTask`);
- :mod:`.ddpm_task`: the registered task (:class:`Diffusion`): the judge, generation metrics;
- :mod:`.ddpm_folders`: model folders (diffusers UNet + scheduler + ``salun.json``).
"""
