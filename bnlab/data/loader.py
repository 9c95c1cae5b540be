"""Batches straight from a uint8 dataset held on the training device.

No DataLoader, no worker processes, no per-sample Python: each batch is a
handful of tensor ops (one gather for crop+flip, one fused normalise), so the
loader costs little next to a training step on CPU and nothing on a GPU.

Every epoch draws its randomness from a generator seeded by (seed, epoch)
alone, so epoch k yields the same batches whether or not the process was
restarted before it: resuming after an interrupt is exact.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

PAD = 4  # pixels of zero padding for the random crop, as in He et al. 2016


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator that depends on (seed, epoch) only (well mixed: seed 1 epoch 0
    and seed 0 epoch 1 do not collide the way ``seed + epoch`` would)."""
    digest = hashlib.sha256(f"bnlab-loader:{seed}:{epoch}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class DeviceLoader:
    """Yields ``(images, labels)``: float32 (B, C, H, W) normalised, int64 (B,), on ``device``.

    train=True: a fresh shuffle each epoch, the last partial batch dropped, and
    (if ``augment``) a pad-4 random crop plus random horizontal flip per image.
    train=False: the data in order, no augmentation, the last partial batch kept.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        train: bool,
        augment: bool,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device | str = "cpu",
        seed: int = 0,
        channels_last: bool = False,
    ) -> None:
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"x must be uint8 (N, H, W, C), got {x.dtype} {tuple(x.shape)}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        n, height, width, channels = x.shape
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std need {channels} entries, got {len(mean)}/{len(std)}")

        self.device = torch.device(device)
        self.batch_size = batch_size
        self.train = train
        self.augment = train and augment  # evaluation never augments
        self.seed = seed
        self.channels_last = channels_last
        self._n, self._h, self._w, self._c = n, height, width, channels

        if self.augment:
            # Keep only a zero-padded copy: the crop at offset (PAD, PAD) is the
            # original image, and zero padding of uint8 0 is what torchvision's
            # RandomCrop(padding=4) does before normalisation.
            # Padding after the move keeps the bigger copy off the host.
            on_device = x.to(self.device)
            padded = F.pad(on_device.permute(0, 3, 1, 2), (PAD, PAD, PAD, PAD))
            self._x = padded.permute(0, 2, 3, 1).contiguous()
        else:
            self._x = x.to(self.device).contiguous()
        self._y = y.to(self.device, torch.int64)

        # (x/255 - mean)/std == x * scale + shift: one fused op per batch.
        std_t = torch.tensor(std, dtype=torch.float32)
        mean_t = torch.tensor(mean, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1).to(self.device)
        self._shift = (-mean_t / std_t).view(1, -1, 1, 1).to(self.device)

        if self.augment:
            hp, wp = height + 2 * PAD, width + 2 * PAD
            # Offsets of a crop's rows/columns inside one flattened padded image;
            # column order reversed gives the horizontal flip for free.
            self._rows = torch.arange(height, device=self.device).view(1, height, 1) * wp
            cols = torch.arange(width, device=self.device)
            self._cols = cols.view(1, 1, width)
            self._cols_flipped = cols.flip(0).view(1, 1, width)
            self._image_stride = hp * wp

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.train:
            return self._n // self.batch_size
        return -(-self._n // self.batch_size)

    def num_images(self) -> int:
        """Images actually yielded per epoch (training drops the last partial batch)."""
        return len(self) * self.batch_size if self.train else self._n

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of epoch ``epoch``; identical for the same (seed, epoch)."""
        if not self.train:
            for start in range(0, self._n, self.batch_size):
                stop = start + self.batch_size
                yield self._finish(self._x[start:stop]), self._y[start:stop]
            return

        gen = epoch_generator(self.seed, epoch)
        used = self.num_images()
        # All of the epoch's random numbers are drawn on the CPU, in a fixed
        # order, then moved in one go: CPU and CUDA runs see the same batches.
        order = torch.randperm(self._n, generator=gen)[:used]
        if self.augment:
            dy = torch.randint(0, 2 * PAD + 1, (used,), generator=gen)
            dx = torch.randint(0, 2 * PAD + 1, (used,), generator=gen)
            flip = torch.randint(0, 2, (used,), generator=gen, dtype=torch.bool)
            wp = self._w + 2 * PAD
            # Flat pixel index of each crop's top-left corner in the padded data.
            corner = order * self._image_stride + dy * wp + dx
            corner, flip = corner.to(self.device), flip.to(self.device)
        order = order.to(self.device)

        for b in range(len(self)):
            batch = slice(b * self.batch_size, (b + 1) * self.batch_size)
            if self.augment:
                images = self._crop_flip(corner[batch], flip[batch])
            else:
                images = self._x[order[batch]]
            yield self._finish(images), self._y[order[batch]]

    def _crop_flip(self, corner: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """Gather B crops (some mirrored) from the padded data with one index_select."""
        cols = torch.where(flip.view(-1, 1, 1), self._cols_flipped, self._cols)
        index = corner.view(-1, 1, 1) + self._rows + cols  # (B, H, W) flat pixel indices
        pixels = self._x.view(-1, self._c).index_select(0, index.view(-1))
        return pixels.view(-1, self._h, self._w, self._c)

    def _finish(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> normalised float32 NCHW (channels_last or contiguous)."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        out = torch.empty(
            (images.shape[0], self._c, self._h, self._w),
            dtype=torch.float32,
            device=self.device,
            memory_format=fmt,
        )
        out.copy_(images.permute(0, 3, 1, 2))  # converts dtype and layout in one pass
        return out.mul_(self._scale).add_(self._shift)
