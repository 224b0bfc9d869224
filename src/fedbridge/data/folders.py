"""Folders of images, as torchvision's ImageFolder reads them: path/<class>/<image> (PNG, JPEG and
whatever else Pillow decodes), or path/<client>/<class>/<image> for a natural partition."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedbridge.data.tables import Part
from fedbridge.errors import DataError

GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def read_folder(path: Path, image_size: tuple[int, int] | None, channels: int | None, by_client: bool,
                key: str = "data.path") -> Part:
    """Every image under `path`, as uint8 [N, C, H, W]; labels are the class folders' names (as numbers
    where every name is one). `channels` None: 1 where every image is greyscale, else 3."""
    if not path.is_dir():
        raise DataError(f"{key} = {str(path)!r}: {'no such folder' if not path.exists() else 'not a folder'}; point "
                        "it at a folder holding one folder of images per class")
    files, labels, owners = [], [], []
    for holder in _folders(path) if by_client else [None]:
        top = path / holder if holder else path
        classes = _folders(top)
        if not classes:
            layout = "<client>/<class>/<image>" if by_client else "<class>/<image>"
            raise DataError(f"{top} holds no class folders; lay the images out as {path}/{layout}")
        for name in classes:
            found = sorted(p for p in (top / name).iterdir() if not p.name.startswith(".") and p.is_file())
            files += found
            labels += [name] * len(found)
            owners += [holder] * len(found)
    if not files:
        raise DataError(f"{path} holds class folders but no image files in them")
    images = [_open(f) for f in files]
    channels = channels or (1 if all(im.mode in GREY_MODES for im in images) else 3)
    if image_size is None:
        sizes = {im.size for im in images}
        if len(sizes) > 1:
            other = next(f for f, im in zip(files, images) if im.size != images[0].size)
            raise DataError(f"{path}: the images differ in size ({files[0]} is {_wh(images[0].size)}, {other} is "
                            f"{_wh(images[files.index(other)].size)}); set data.image_size = [height, width] to resize them all")
    arrays = [_pixels(im, channels, image_size) for im in images]
    names = np.array(labels)
    if all(n.isdigit() for n in labels):
        names = names.astype(np.int64)  # class folders 0..9 sort as numbers, not as text
    return Part(np.stack(arrays), names, str(path), np.array(owners) if by_client else None)


def _folders(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _open(file: Path):
    from PIL import Image, UnidentifiedImageError  # only image folders need Pillow

    try:
        image = Image.open(file)
        image.load()  # decodes now: a truncated file fails here, not in the middle of training
    except UnidentifiedImageError:
        raise DataError(f"{file} is not an image Pillow can read (PNG, JPEG, ...); remove it or replace it") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{file} is a damaged or truncated image ({e}); remove it or replace it") from None
    return image


def _pixels(image, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    image = image.convert("L" if channels == 1 else "RGB")
    if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def _wh(size: tuple[int, int]) -> str:
    return f"{size[1]}x{size[0]} (height x width)"
