"""The sweep's inputs: images with a prompt, from Python objects, a folder of images or a JSONL file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PROMPT = "Describe the image."
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class Sample:
    """One prompt: its images (PIL images, or paths read on use) and its text, written after the images."""

    images: list = field(default_factory=list)
    prompt: str = DEFAULT_PROMPT

    def pil_images(self) -> list:
        from PIL import Image

        return [Image.open(image).convert("RGB") if isinstance(image, (str, Path)) else image for image in self.images]


def as_sample(item, base: Path | None = None) -> Sample:
    """``item`` as a ``Sample``: a ``Sample``, or a dict with ``image`` (one) or ``images`` (a list) and
    ``prompt``; relative paths are read from ``base``."""
    if isinstance(item, Sample):
        return item
    if not isinstance(item, dict) or ("image" in item) == ("images" in item):
        raise ValueError(
            f"graphprune: a sample is a graphprune.fidelity.Sample or a dict with 'image' or 'images' (one of them) "
            f"and 'prompt'; got {item!r:.100}"
        )
    images = [item["image"]] if "image" in item else list(item["images"])
    if base is not None:
        images = [
            base / image if isinstance(image, str) and not Path(image).is_absolute() else image for image in images
        ]
    return Sample(images, item.get("prompt", DEFAULT_PROMPT))


def load_samples(path: str | Path, prompt: str = DEFAULT_PROMPT) -> list[Sample]:
    """The samples at ``path``: a folder's images (sorted by name), each with ``prompt``, or a JSONL file with one
    ``{"image" or "images": ..., "prompt": ...}`` object a line (image paths relative to the file's folder)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(file for file in path.iterdir() if file.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"graphprune: no image ({', '.join(IMAGE_SUFFIXES)}) in the folder {str(path)!r}")
        return [Sample([file], prompt) for file in files]
    if not path.is_file():
        raise ValueError(f"graphprune: samples must be a folder of images or a JSONL file; {str(path)!r} is neither")
    samples = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                samples.append(as_sample({"prompt": prompt} | json.loads(line), path.parent))
            except (json.JSONDecodeError, TypeError, ValueError) as error:
                raise ValueError(f"graphprune: {path}:{number}: {str(error).splitlines()[0]}") from None
    if not samples:
        raise ValueError(f"graphprune: no sample in {str(path)!r}")
    return samples
