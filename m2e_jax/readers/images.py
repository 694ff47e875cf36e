"""Opening and decoding the images users bring (photos, label maps, Detectron IUV PNGs) into numpy.

Every image any command reads (infer, evaluate, the dataset build, the web page) goes through
`open_image`: it reads the header first (PIL opens lazily) and refuses an image over `max_pixels`
before decoding it, so a small file that decodes to gigabytes (an image bomb) costs nothing; PIL's
own DecompressionBombError / DecompressionBombWarning end in the same one line. Truncated files,
non-images and folders end in one line naming the file (ReadError), never a traceback.

Photos of any PIL mode become uint8 RGB: CMYK and palette images are converted, 16-bit images
scaled to 8 bits (not clipped), transparent ones composited over black (the letterbox padding),
and the EXIF orientation applied as detectron2's `read_image` and OpenCV's `imread` apply it, so a
photo has the orientation its DensePose was computed on.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from m2e_jax import densepose

MAX_PIXELS = 40_000_000  # 40 megapixels: 120 MB decoded as RGB; PIL's own bomb warning is at 89 M


class ReadError(ValueError):
    """A file that cannot be used; the message names the file and the problem (one line)."""


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.1f} megapixels"


def open_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The decoded image at `path`, refused (ReadError, one line) when it is missing, not an image,
    truncated, or over `max_pixels` (width x height, checked from the header before decoding)."""
    return _open(path, max_pixels)[0]


def _open(path: str | os.PathLike, max_pixels: int) -> tuple[Image.Image, bool]:
    # (image, whether its samples were 16-bit in the file: PIL reads 16-bit RGB PNGs as 8-bit RGB)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ReadError(f"{path}: file not found")
    if os.path.isdir(path):
        raise ReadError(f"{path}: a folder, not an image")
    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(f)  # reads the header only
            w, h = img.size
            if w * h > max_pixels:
                raise ReadError(f"{path}: image is {w}x{h} ({_megapixels(w * h)}), over the limit of "
                                f"{_megapixels(max_pixels)}; downscale it first")
            sixteen = any(";16" in str(getattr(t, "args", "")) for t in img.tile)
            img.load()  # decodes now, so truncated files fail here, and the file can close
    except ReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        size = _header_size(path)
        if size is not None and size[0] * size[1] > max_pixels:  # PIL refused before our check ran
            w, h = size
            raise ReadError(f"{path}: image is {w}x{h} ({_megapixels(w * h)}), over the limit of "
                            f"{_megapixels(max_pixels)}; downscale it first") from None
        raise ReadError(f"{path}: image too large to decode safely ({' '.join(str(e).split())}); "
                        "downscale it first") from None
    except UnidentifiedImageError:
        raise ReadError(f"{path}: unreadable image (no image format PIL reads: not an image, or its header "
                        "is cut off)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ReadError(f"{path}: unreadable image, truncated or corrupt ({type(e).__name__}: "
                        f"{' '.join(str(e).split())})") from None
    return img, sixteen


def _header_size(path: str) -> tuple[int, int] | None:
    """(width, height) from the file's header through PIL's format plugins, without the
    decompression-bomb check `Image.open` makes (which raises before the size is known to us)."""
    Image.init()
    with open(path, "rb") as f:
        prefix = f.read(16)
        for fmt in Image.ID:
            factory, accept = Image.OPEN[fmt]
            if accept is not None and not accept(prefix):
                continue
            f.seek(0)
            try:
                return tuple(factory(f, path).size)
            except Exception:  # not this format: try the next plugin, as Image.open does
                f.seek(0)
    return None


def _to_8bit(arr: np.ndarray) -> np.ndarray:
    """16-bit samples (0..65535) -> uint8 by their high byte; 8-bit ones unchanged."""
    return (arr >> 8).astype(np.uint8) if arr.dtype.itemsize > 1 else arr.astype(np.uint8)


def photo_rgb(img: Image.Image, where: str) -> np.ndarray:
    """A decoded image of any PIL mode -> uint8 `[H, W, 3]` RGB (see the module docstring)."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey (PNG): scale, do not clip
        grey = np.asarray(img)
        if img.mode == "I" and grey.max(initial=0) <= 255:
            grey = grey.astype(np.uint8)
        else:
            grey = _to_8bit(np.clip(grey, 0, 65535).astype(np.uint16))
        return np.repeat(grey[..., None], 3, axis=-1)
    if img.mode == "F":
        raise ReadError(f"{where}: floating-point image (PIL mode F); save the photo as 8-bit RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = np.asarray(img.convert("RGBA"), np.float32)
        return np.round(rgba[..., :3] * (rgba[..., 3:] / 255.0)).astype(np.uint8)
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return np.asarray(img, dtype=np.uint8)


def read_rgb(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A photo (PNG/JPEG/..., any PIL mode) -> uint8 `[H, W, 3]` RGB."""
    return photo_rgb(open_image(path, max_pixels), os.fspath(path))


def read_labels(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A single-channel label map (parsing, instance indices; 8 or 16 bit; palette PNGs give their
    indices) -> int32 `[H, W]`."""
    img = open_image(path, max_pixels)
    if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
        raise ReadError(f"{os.fspath(path)}: expected a single-channel label PNG, got PIL mode {img.mode}")
    return np.asarray(img).astype(np.int32)


def read_iuv_rgb_png(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A Detectron `*_IUV.png` -> uint8 `[H, W, 3]` in DensePose order (I, U, V).

    Detectron writes the [I, U, V] array with OpenCV (channel 0 stored as Blue), so PIL's RGB pixels
    are [V, U, I]; `densepose.iuv_from_png_rgb` undoes that. Anything else (one channel, alpha,
    16 bits, a lossy JPEG) is refused in one line: it is not what Detectron writes.
    """
    where = os.fspath(path)
    img, sixteen = _open(path, max_pixels)
    if img.format != "PNG":
        raise ReadError(f"{where}: IUV must be a PNG as Detectron writes it, got {img.format or 'unknown'} "
                        "(lossy formats blend part labels)")
    if img.mode != "RGB":
        raise ReadError(f"{where}: expected a 3-channel IUV PNG, got PIL mode {img.mode}")
    if sixteen:
        raise ReadError(f"{where}: 16-bit IUV PNG; Detectron writes 8-bit")
    return np.ascontiguousarray(densepose.iuv_from_png_rgb(np.asarray(img, dtype=np.uint8)))
