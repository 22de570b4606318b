"""A PyTorch ``Dataset`` over the uint8 image cache.

Each item is ``(image, target)``: ``image`` a float tensor ``(1, H, W)`` in [0, 1], ``target``
an int64 class index (multiclass), a float32 scalar (binary, regression) or a float32 vector
(multilabel, where NaN marks a missing label).

>>> ds = CXRDataset(S.images, S.targets("race"), indices=S.split_index("train"))  # doctest: +SKIP
>>> x, y = ds[0]; x.shape                                                       # doctest: +SKIP
torch.Size([1, 64, 64])
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

Transform = Callable[[torch.Tensor], torch.Tensor]


class Augmentation:
    """Small random affine (rotation +-5 deg, shift 3%, scale 0.95-1.05) and brightness/contrast
    jitter (+-10%): what a radiograph might plausibly vary by, nothing that flips anatomy.

    Called on a uint8 ``(H, W)`` array, returns a float tensor ``(1, H, W)`` in [0, 1]. The
    affine runs on a PIL image (about 50x faster on a CPU than on a tensor), the jitter on the
    tensor; both come from ``torchvision.transforms.v2``.
    """

    def __init__(self) -> None:
        from torchvision.transforms import v2   # here, not at import: torchvision costs ~1 s to load

        self.affine = v2.RandomAffine(degrees=5, translate=(0.03, 0.03), scale=(0.95, 1.05),
                                      interpolation=v2.InterpolationMode.BILINEAR)
        self.jitter = v2.ColorJitter(brightness=0.1, contrast=0.1)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        array = np.asarray(image)
        if array.dtype == np.uint8:
            array = np.asarray(self.affine(Image.fromarray(array)))
            tensor = to_float_tensor(array)
        else:
            tensor = self.affine(to_float_tensor(array))
        return self.jitter(tensor).clamp_(0.0, 1.0)


def default_augmentation() -> Augmentation:
    """The course's training augmentation (see :class:`Augmentation`)."""
    return Augmentation()


def to_float_tensor(image: np.ndarray) -> torch.Tensor:
    """A uint8 ``(H, W)`` array (or float in [0, 1]) as a float tensor ``(1, H, W)`` in [0, 1]."""
    array = np.asarray(image)
    tensor = torch.from_numpy(np.array(array, dtype=np.float32, copy=True))
    if array.dtype == np.uint8:
        tensor = tensor / 255.0
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor


def _target_tensor(target: np.ndarray) -> torch.Tensor:
    if np.issubdtype(target.dtype, np.integer):
        return torch.as_tensor(target, dtype=torch.int64)
    return torch.as_tensor(target, dtype=torch.float32)


class CXRDataset(Dataset):
    """Images from the cache with their targets.

    Args:
        images: uint8 array ``(N, H, W)`` (a memmap is fine: rows are read lazily).
        targets: one target per item: int class indices (classification), floats (binary,
            regression) or an ``(n, K)`` float array (multilabel).
        transform: an extra callable applied after augmentation, at train and at test time
            (chapter 4's degradations plug in here). It runs once per *batch* ``(B, 1, H, W)``
            in :meth:`collate`, which :func:`cxrlab.core.train.fit` uses as the loader's
            ``collate_fn``: one FFT per batch instead of one per image (per-image FFTs on two
            threads cost 0.1 ms idle but up to 16 ms when the cores are busy). ``ds[i]``
            is the image *before* it; ``ds.collate([ds[i]])`` the batch of one after it.
        augment: apply :func:`default_augmentation` (use it for training only).
        indices: rows of ``images`` to use; ``targets`` then has one entry per index. Saves
            copying a subset of a large memmap.
    """

    def __init__(
        self,
        images: np.ndarray,
        targets: Sequence | np.ndarray,
        transform: Transform | None = None,
        augment: bool = False,
        indices: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        self.images = images
        self.indices = np.arange(len(images)) if indices is None else np.asarray(indices, int)
        self.targets = np.asarray(targets)
        if len(self.targets) != len(self.indices):
            raise ValueError(f"got {len(self.targets)} targets for {len(self.indices)} images; "
                             "pass one target per image (or per index)")
        self.transform = transform
        self.augmentation = default_augmentation() if augment else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.images[self.indices[item]]
        image = self.augmentation(raw) if self.augmentation else to_float_tensor(raw)
        return image, _target_tensor(self.targets[item])

    def collate(self, items: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """Stack ``(image, target)`` items into a batch and apply ``transform`` to the batch."""
        images, targets = default_collate(items)
        return [self.transform(images) if self.transform is not None else images, targets]
