"""Text-to-image runs; moved to :mod:`salun.tasks.t2i_pipeline` (the task's own runs).
This module re-exports them for existing imports."""

from salun.tasks.t2i_pipeline import (  # noqa: F401
    SCENARIOS,
    T2IExperiment,
    build_pipeline,
    check_config,
    class_index,
    mask_for,
    nudity_eval,
    prepare_t2i,
    prompt_table,
    round_robin,
    run_mask_t2i,
    run_unlearn_t2i,
    sample_prompts,
    unlearn_t2i,
)
