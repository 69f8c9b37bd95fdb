"""The ``text_to_image`` task: Stable-Diffusion-style unlearning (concept or class erasure) of a
diffusers pipeline, registered in :data:`salun.core.registry.TASKS`; its runs are in
:mod:`salun.tasks.text_to_image.text_to_image_runs`."""

from __future__ import annotations

from typing import Any, ClassVar

from salun.config import Config
from salun.core.registry import TASKS
from salun.tasks.text_to_image.text_to_image_objective import TextToImageTask
from salun.tasks.text_to_image.text_to_image_runs import T2IRuns, check_config


@TASKS.register("text_to_image")
class TextToImage(TextToImageTask):
    """Stable-Diffusion-style text-to-image unlearning (concept or class erasure); built by
    :func:`prepare_t2i`, runs in :class:`T2IRuns`."""

    default_preset: ClassVar[str | None] = "demo-sd"
    config_section: ClassVar[str | None] = "text_to_image"
    headline: ClassVar[tuple[str, ...]] = ()
    demo: ClassVar[str] = "salun.demos.text_to_image_demo:run_t2i_demo"
    demo_files: ClassVar[str] = "report.md, metrics.json and grids (grid_*.png)"
    demo_out: ClassVar[str] = "runs/demo-sd"
    pipeline: ClassVar[Any] = T2IRuns

    @staticmethod
    def check_config(cfg: Config) -> None:
        check_config(cfg)
