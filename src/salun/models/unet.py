"""Class-conditional DDPM UNet in the ``diffusers`` format.

The network is a plain :class:`diffusers.UNet2DModel` with a learned class embedding of
``num_classes + 1`` rows: rows ``0 .. K-1`` are the classes and row ``K`` is the *null* label used
for classifier-free guidance (Ho & Salimans, "Classifier-Free Diffusion Guidance", 2021). A saved
model is an ordinary diffusers folder, loadable with ``UNet2DModel.from_pretrained``.

Reference for the denoising model: Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models",
NeurIPS 2020.
"""

from __future__ import annotations

from collections.abc import Sequence

from salun.core.errors import SalunError, require_extra


def build_unet(
    image_size: int,
    in_channels: int,
    num_classes: int,
    widths: Sequence[int] = (16, 32, 64),
    layers_per_block: int = 1,
    attention: bool = False,
):
    """A small class-conditional ``UNet2DModel`` (one resolution level per entry of ``widths``).

    Args:
        image_size: side of the square images (must be divisible by 2**(len(widths) - 1)).
        in_channels: image channels (output channels are the same: it predicts the noise).
        num_classes: K; the embedding has K + 1 rows, row K being the null label.
        widths: channels per level; each must be divisible by the GroupNorm group count (8).
        layers_per_block: ResNet blocks per level.
        attention: self-attention at the lowest resolution (slower on a CPU).
    """
    require_extra("diffusers", "generation")
    from diffusers import UNet2DModel

    widths = tuple(int(w) for w in widths)
    if not widths or any(w < 8 or w % 8 for w in widths):
        raise SalunError(f"unet widths must be multiples of 8 (at least 8), got {list(widths)}")
    if image_size % 2 ** (len(widths) - 1):
        raise SalunError(
            f"image size {image_size} is not divisible by 2**{len(widths) - 1} "
            f"(needed by {len(widths)} UNet levels); use fewer widths or another image size"
        )
    down = ["DownBlock2D"] * len(widths)
    up = ["UpBlock2D"] * len(widths)
    if attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=image_size,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=widths,
        layers_per_block=layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        num_class_embeds=num_classes + 1,
        norm_num_groups=8,
        add_attention=attention,
    )
