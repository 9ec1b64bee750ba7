"""Photo augmentation for training: each time a training photo is read, a small random shift and scale.

A CE that meets the same pixels of each training photo some 24 times learns those photos as well as it learns
to read them: on the shapes set it then accepts a near-miss caption against a photo it trained on (mean match
probability 0.95) more readily than the caption's own unseen photo (0.87). Shifting and scaling by a few
percent keeps every caption true (left stays left, a large object stays larger than a small one) while no
two readings of a photo are the same pixels.
"""

from __future__ import annotations

AUGMENTS = ("none", "shift")
MAX_SHIFT = 0.04  # of the photo's side, each way
SCALES = (0.9, 1.1)


def shift_and_scale(pixels, generator, max_shift: float = MAX_SHIFT, scales: tuple = SCALES):
    """`pixels` (N, C, H, W), each moved by up to `max_shift` of its side along each axis and zoomed by a factor
    drawn from `scales` about its centre; the edge pixels fill what comes into view (a photo's background)."""
    import torch
    import torch.nn.functional as F

    n = pixels.shape[0]
    if n == 0:
        return pixels
    u = torch.rand(n, 3, generator=generator)
    scale = scales[0] + (scales[1] - scales[0]) * u[:, 0]
    shift = (u[:, 1:] * 2 - 1) * max_shift * 2  # affine_grid's coordinates span 2 over the side
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale  # sampling a smaller window zooms in
    theta[:, :, 2] = shift
    theta = theta.to(pixels.device, pixels.dtype)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)
