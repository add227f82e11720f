"""User image files -> 28x28 uint8 images that look like Fashion-MNIST (light object on black)."""

from __future__ import annotations

import glob
import os
import stat
import sys
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fmnist_jax.errors import UserError


def to_fashion_mnist(image: Image.Image) -> np.ndarray:
    """Upright as its EXIF orientation shows it (phones store portrait photos sideways), grayscale,
    fitted into 28x28 keeping the aspect ratio, inverted when the background is light.

    Fashion-MNIST shows a light garment on a black background; a photo usually shows a darker object
    on a light background, so a light border (the background) means invert.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA", "P") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new(
            "RGBA", rgba.size, (255, 255, 255, 255)
        )  # transparency reads as background
        image = Image.alpha_composite(background, rgba)
    gray = _gray_levels(image)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if border.mean() > 127:
        gray = 255.0 - gray
    h, w = gray.shape
    scale = 28 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resized = np.asarray(
        Image.fromarray(gray.astype(np.uint8)).resize(size, Image.Resampling.LANCZOS)
    )
    canvas = np.zeros((28, 28), np.uint8)
    top, left = (28 - size[1]) // 2, (28 - size[0]) // 2
    canvas[top : top + size[1], left : left + size[0]] = resized
    return canvas[..., None]


def _gray_levels(image: Image.Image) -> np.ndarray:
    """The image's gray levels in 0-255 (float32). PIL's `convert("L")` clips 16-bit and float
    images at 255 instead of scaling them: 16-bit PNGs and TIFFs ("I;16", "I" in older Pillow)
    span 0-65535, float TIFFs ("F") 0-1 as most tools write them (or 0-255)."""
    if image.mode.startswith("I"):
        gray = np.asarray(image, np.float32) / 257
    elif image.mode == "F":
        gray = np.nan_to_num(np.asarray(image, np.float32))
        if gray.max() <= 1:
            gray = gray * 255
    else:
        return np.asarray(image.convert("L"), np.float32)
    return np.clip(gray, 0, 255)


# Decoding is bounded by this many pixels (~12 bytes each at the peak: RGBA, then float32 gray), far
# below PIL's own bomb limit (89 MP warns, 179 MP refuses). JPEGs above it decode at 1/2-1/8 scale.
MAX_PIXELS = 16_000_000


def files(paths: list[str]) -> tuple[list[str], list[str]]:
    """(the image files `paths` name, a message for each path that names none): a file as given, a
    directory's image files (by extension, sorted), a quoted wildcard pattern's matches (sorted;
    the shell expands unquoted ones)."""
    found, problems = [], []
    for path in paths:
        if os.path.isdir(path):
            inside, unreadable = _directory_images(path)
            found += inside
            problems += unreadable
            if not inside and not unreadable:
                problems.append(f"Directory {path} holds no image files (PNG, JPEG, ...).")
        elif not os.path.exists(path) and any(c in path for c in "*?["):
            matches = sorted(glob.glob(path))
            found += matches
            if not matches:
                problems.append(f"No file matches {path}.")
        else:
            found.append(path)
    return found, problems


def _directory_images(path: str) -> tuple[list[str], list[str]]:
    """(a directory's image files by extension, sorted; a message for each entry that could not
    be read, such as a symbolic link that loops): one bad entry leaves the others readable."""
    extensions = Image.registered_extensions()
    try:
        entries = sorted(os.scandir(path), key=lambda entry: entry.name)
    except OSError as e:
        return [], [f"Directory {path} could not be read ({e})."]
    inside, unreadable = [], []
    for entry in entries:
        if os.path.splitext(entry.name)[1].lower() not in extensions:
            continue
        try:
            if entry.is_file():
                inside.append(entry.path)
        except OSError as e:
            unreadable.append(f"{entry.path} could not be read ({e.strerror}).")
    return inside, unreadable


def read(path: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Reads one image file (PNG, JPEG, ... any mode; at most `max_pixels` decoded) as a [28, 28, 1]
    uint8 image. The size is checked from the file's header, before anything is decoded, and
    anything but a regular file (a FIFO would block forever, a device never end) is refused before
    it is opened."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise UserError(
                f"{path} is not a regular file (a FIFO, device or socket), so it is not read: "
                "pass image files (PNG, JPEG, ...)."
            )
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # A damaged EXIF block leaves the picture as stored, with no orientation to apply.
            warnings.filterwarnings("ignore", "Corrupt EXIF data", UserWarning)
            with Image.open(path) as image:
                if image.width * image.height > max_pixels:
                    image.draft(
                        image.mode, (224, 224)
                    )  # JPEG decodes at a reduced scale; other formats keep their size
                if image.width * image.height > max_pixels:
                    raise _too_large(path, image.width, image.height, max_pixels)
                image.load()
                return to_fashion_mnist(image)
    except FileNotFoundError as e:
        raise UserError(f"Image file {path} does not exist.") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UserError(
            f"Image file {path} was not decoded: {e} Downscale it (the model sees 28x28)."
        ) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(
            f"Image file {path} could not be read as an image ({e}). Pass a PNG or JPEG file."
        ) from e


def _too_large(path: str, width: int, height: int, max_pixels: int) -> UserError:
    return UserError(
        f"Image file {path} is {width}x{height} pixels ({width * height / 1e6:.0f} MP), above the limit of "
        f"{max_pixels / 1e6:g} MP that keeps memory bounded; it was not decoded. Downscale it (the model sees 28x28), "
        "or raise --max_pixels if the machine has the memory."
    )


def read_files(
    paths: list[str], max_pixels: int, failures: list[str]
) -> tuple[list[np.ndarray], list[str]]:
    """(the images of the files that can be read, their file names); each file that cannot be
    read is printed as one `error:` line and added to `failures`, and the others go on."""
    batch, titles = [], []
    for path in paths:
        try:
            batch.append(read(path, max_pixels))
        except UserError as e:
            failures.append(str(e))
            print(f"error: {e}", file=sys.stderr)
            continue
        titles.append(os.path.basename(path))
    return batch, titles
