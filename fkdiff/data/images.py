"""Image datasets through tensorflow-datasets, as :class:`~fkdiff.data.source.DataSource`s.

Every image source loads its split once into host memory as ``uint8`` (this process's share only:
``tfds.even_splits`` over ``jax.process_count()``) and serves batches with
``host_batch(seed, step, batch_size)``: example indices and flips come from a NumPy generator
seeded with ``(seed, step, process_index)``, so the data stream is a pure function of
``(seed, step)`` (for a given process count) and a resumed run sees exactly the batches an
uninterrupted one would have seen. Images are scaled to ``[-1, 1]`` (σ_d = 0.5).

Sources (``data.name``):
- ``digits``: scikit-learn's bundled 8×8 digits (1,797 images, 10 classes) as the custom tfds
  builder :class:`SklearnDigits` — prepared automatically, offline, on first use. With
  ``data.label = 'heavy_stroke'`` the label is instead a binary attribute computed from the
  images: stroke mass (mean ink) above the train split's median (:func:`heavy_stroke`).
- ``cifar10``: 32×32×3, 10 classes, horizontal flips.
- ``celeb_a``: 218×178 faces centre-cropped to 140×140 and resized to 64×64 (area), the 40
  binary attributes as a multi-label ``(40,)`` label (:data:`CELEBA_ATTRIBUTES` order), flips.
- ``afhqv2_64`` / ``ffhq64``: a user-supplied image folder read with
  ``tfds.folder_dataset.ImageFolder`` (``data.image_dir/train/<class>/*.png``), resized to 64×64;
  AFHQv2's folder classes (cat, dog, wild) are the labels, FFHQ is unconditional; flips.

Preparation (nothing is downloaded implicitly; an unprepared dataset raises
:class:`DatasetNotPreparedError` saying what to run):
- cifar10 / celeb_a: ``tfds build cifar10 --data_dir=<dir>`` (CelebA needs its files placed in
  ``<dir>/downloads/manual`` first, see the tfds catalog page of ``celeb_a``), then
  ``--config.data.data_dir=<dir>``.
- afhqv2_64 / ffhq64: images under ``<image_dir>/train/<class>/`` (AFHQv2 as distributed by
  StarGAN v2 already has ``train/{cat,dog,wild}``; put FFHQ's images under ``train/ffhq/``). Resize
  them to 64×64 beforehand for fast loading (e.g. EDM's ``dataset_tool.py --resolution=64x64``);
  larger images are resized on load.
"""

import functools
import os
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fkdiff.data import source as source_lib
from fkdiff.data.source import DataSource

Array = jax.Array
IMAGE_SIGMA_DATA = 0.5
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup",
    "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns",
    "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young")


IMAGE_SHAPES = {"digits": (8, 8, 1), "cifar10": (32, 32, 3), "celeb_a": (64, 64, 3),
                "afhqv2_64": (64, 64, 3), "ffhq64": (64, 64, 3)}


class DatasetNotPreparedError(RuntimeError):
  """The dataset's files are not where the config says; the message says how to prepare them."""


# ----------------------------------------------------------------------------------------------
# The scikit-learn digits as a tfds builder.

@functools.cache   # tfds registers builder classes by name: define it once per process.
def _digits_builder_cls():
  """Defines :class:`SklearnDigits` lazily (importing tfds costs ~2 s; TensorFlow more)."""
  import tensorflow_datasets as tfds

  class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8×8 handwritten digits (UCI), grey levels 0–16 rescaled to 0–255.

    Splits: ``train`` (the first 1,500 images) and ``test`` (the remaining 297).
    """
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    # Nothing is downloaded, so there are no checksums. Finding the checksums file next to the
    # builder's code would need the optional package importlib_resources.
    _checksums_path = None

    def _info(self):
      return self.dataset_info_from_configs(
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(8, 8, 1)),
              "label": tfds.features.ClassLabel(num_classes=10)}),
          supervised_keys=("image", "label"),
          homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html")

    def _split_generators(self, dl_manager):
      del dl_manager   # bundled with scikit-learn: nothing to download.
      return {"train": self._generate_examples(0, 1500),
              "test": self._generate_examples(1500, None)}

    def _generate_examples(self, start, stop):
      from sklearn.datasets import load_digits
      digits = load_digits()
      images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
      for i in range(start, len(images) if stop is None else stop):
        yield i, {"image": images[i], "label": int(digits.target[i])}

  return SklearnDigits


DIGITS_LABELS = ("class", "heavy_stroke")


def stroke_mass(images) -> np.ndarray:
  """Mean ink of each image, in ``[0, 1]``: ``images`` uint8 ``(N, H, W, C)`` in [0, 255], or
  float in ``[-1, 1]`` (model range); ``(N,)``."""
  x = np.asarray(images)
  x = x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else (x.astype(np.float64) + 1) / 2
  return np.clip(x, 0, 1).reshape(x.shape[0], -1).mean(-1)


@functools.cache
def heavy_stroke_threshold(data_dir: Optional[str] = None) -> float:
  """The median :func:`stroke_mass` of the digits' whole train split (about half the train
  images lie above it)."""
  builder = digits_builder(data_dir)
  arrays = _to_numpy(builder.as_dataset(split="train", shuffle_files=False), _image_label)
  return float(np.median(stroke_mass(arrays["image"])))


def heavy_stroke(images, threshold: float) -> np.ndarray:
  """The digits' second attribute: 1 where :func:`stroke_mass` exceeds ``threshold``; int32."""
  return (stroke_mass(images) > threshold).astype(np.int32)


def digits_builder(data_dir: Optional[str] = None):
  """The :class:`SklearnDigits` builder in ``data_dir`` (tfds default if empty), prepared."""
  builder = _digits_builder_cls()(data_dir=data_dir or None)
  builder.download_and_prepare()   # offline and a few seconds; a no-op once prepared.
  return builder


# ----------------------------------------------------------------------------------------------
# Loading a split into host memory.

def process_split(split: str = "train") -> str:
  """This process's share of ``split`` (``tfds.even_splits`` over ``jax.process_count()``)."""
  import tensorflow_datasets as tfds
  if jax.process_count() == 1:
    return split
  return tfds.even_splits(split, n=jax.process_count())[jax.process_index()]


def _prepare_hint(name: str, data_dir: str) -> str:
  where = data_dir or "~/tensorflow_datasets"
  return (f"Dataset {name!r} is not prepared in {where}. Prepare it once with "
          f"`tfds build {name} --data_dir={where}` (on a machine with internet access; celeb_a "
          "also needs its manual files, see the tfds catalog) and pass "
          "--config.data.data_dir=<that dir>.")


def _to_numpy(ds, preprocess: Callable, batch: int = 1024):
  """Runs ``preprocess`` over a ``tf.data`` dataset of examples; returns stacked numpy arrays."""
  import tensorflow as tf
  import tensorflow_datasets as tfds
  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE).batch(batch)
  parts = list(tfds.as_numpy(ds))
  if not parts:
    raise ValueError("The dataset split is empty.")
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _load_tfds(name: str, split: str, data_dir: str, preprocess: Callable) -> dict:
  import tensorflow_datasets as tfds
  try:
    ds = tfds.load(name, split=process_split(split), data_dir=data_dir or None, download=False,
                   shuffle_files=False)
  except (AssertionError, tfds.core.registered.DatasetNotFoundError, FileNotFoundError) as e:
    raise DatasetNotPreparedError(_prepare_hint(name, data_dir)) from e
  return _to_numpy(ds, preprocess)


def _image_label(example):
  return {"image": example["image"], "label": example["label"]}


def _celeb_a(example, size: int = 64, crop: int = 140):
  """Centre crop ``crop × crop`` (offsets 39, 19 of 218 × 178), area resize to ``size``."""
  import tensorflow as tf
  image = tf.image.crop_to_bounding_box(example["image"], (218 - crop) // 2, (178 - crop) // 2,
                                        crop, crop)
  image = tf.image.resize(image, (size, size), method="area", antialias=True)
  attributes = tf.stack([tf.cast(example["attributes"][a], tf.int32) for a in CELEBA_ATTRIBUTES])
  return {"image": tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8),
          "label": attributes}


def _resized(size: int, with_label: bool):
  def preprocess(example):
    import tensorflow as tf
    image = example["image"]
    if image.shape[-1] == 1:   # grey images in a colour dataset.
      image = tf.image.grayscale_to_rgb(image)
    image = tf.image.resize(image[..., :3], (size, size), method="area", antialias=True)
    out = {"image": tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)}
    if with_label:
      out["label"] = tf.cast(example["label"], tf.int32)
    return out
  return preprocess


def load_folder(image_dir: str, size: int, with_label: bool, split: str = "train") -> dict:
  """Images of ``image_dir/<split>/<class>/*`` resized to ``size``; labels = class folders."""
  import tensorflow_datasets as tfds
  if not image_dir or not os.path.isdir(os.path.join(image_dir, split)):
    raise DatasetNotPreparedError(
        f"No image folder {os.path.join(image_dir or '<data.image_dir>', split)}. Put the images "
        f"under <dir>/{split}/<class>/ (AFHQv2: train/{{cat,dog,wild}}; FFHQ: train/ffhq/) and "
        "pass --config.data.image_dir=<dir>; resizing them to 64x64 first makes loading fast.")
  builder = tfds.folder_dataset.ImageFolder(image_dir)
  ds = builder.as_dataset(split=process_split(split), shuffle_files=False)
  return _to_numpy(ds, _resized(size, with_label), batch=256)


def load_arrays(data: ml_collections.ConfigDict, split: str = "train") -> dict:
  """This process's share of ``split`` of ``data.name`` as ``{'image': uint8 (N,H,W,C),
  'label': int32 (N,) | (N, A)}`` (no label for unconditional folders)."""
  name = data.name
  if data.get("label", "class") not in DIGITS_LABELS or (data.get("label", "class") != "class"
                                                          and name != "digits"):
    raise ValueError(f"data.label={data.label!r} is not available for {name!r}; 'class' is the "
                     f"dataset's own label, and the digits also have {DIGITS_LABELS[1:]}.")
  if name == "digits":
    builder = digits_builder(data.data_dir)
    arrays = _to_numpy(builder.as_dataset(split=process_split(split), shuffle_files=False),
                       _image_label)
    if data.get("label", "class") == "heavy_stroke":
      arrays["label"] = heavy_stroke(arrays["image"], heavy_stroke_threshold(data.data_dir))
    return arrays
  if name == "cifar10":
    return _load_tfds("cifar10", split, data.data_dir, _image_label)
  if name == "celeb_a":
    return _load_tfds("celeb_a", split, data.data_dir, _celeb_a)
  if name in ("afhqv2_64", "ffhq64"):
    return load_folder(data.image_dir, 64, with_label=name == "afhqv2_64", split=split)
  raise ValueError(f"Unknown image dataset {name!r}.")


# ----------------------------------------------------------------------------------------------
# Batches.

def to_model_range(images: np.ndarray) -> np.ndarray:
  """``uint8 [0, 255]`` → ``float32 [-1, 1]``."""
  return images.astype(np.float32) / 127.5 - 1.0


def to_uint8(x) -> np.ndarray:
  """``[-1, 1]`` → ``uint8 [0, 255]`` (clipped)."""
  return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def host_batch_fn(arrays: dict, random_flip: bool) -> Callable[[int, int, int], dict]:
  """``host_batch(seed, step, batch_size) -> batch``: this process's rows of a global batch.

  Indices are drawn uniformly with replacement and flips with probability ½, from
  ``np.random.default_rng((seed, step, process_index))``: a pure function of its arguments.
  The local batch has ``batch_size // jax.process_count()`` rows: ``{'x': float32
  (b, H, W, C) in [-1, 1][, 'label': int32 (b,) | (b, A)]}``.
  """
  images, labels = arrays["image"], arrays.get("label")

  def host_batch(seed: int, step: int, batch_size: int) -> dict:
    local = batch_size // jax.process_count()
    rng = np.random.default_rng((int(seed), int(step), jax.process_index()))
    idx = rng.integers(0, len(images), local)
    x = to_model_range(images[idx])
    if random_flip:
      flip = rng.random(local) < 0.5
      x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
    batch = {"x": x}
    if labels is not None:
      batch["label"] = labels[idx].astype(np.int32)
    return batch

  return host_batch


def in_memory_sample_fn(arrays: dict) -> Callable[[Array, int], dict]:
  """A jittable ``sample(key, batch_size)`` over a small in-memory set (indices, no flips).

  The images become a constant of every program that calls it: use it for small sets only
  (the digits); training uses :func:`host_batch_fn`.
  """
  labels = None if arrays.get("label") is None else jnp.asarray(arrays["label"], jnp.int32)
  return source_lib.in_memory_sample_fn(jnp.asarray(to_model_range(arrays["image"])), labels)


def _no_sample(name: str):
  def sample(key, batch_size):
    raise NotImplementedError(f"Dataset {name!r} is served from the host (DataSource.host_batch); "
                              "it has no in-jit sampler.")
  return sample


def image_source(data: ml_collections.ConfigDict) -> DataSource:
  """The :class:`~fkdiff.data.source.DataSource` of image dataset ``data.name``."""
  arrays = load_arrays(data, "train")
  sigma_data = data.sigma_data if data.sigma_data > 0 else IMAGE_SIGMA_DATA
  small = arrays["image"].nbytes <= 16 * 2**20
  sample = in_memory_sample_fn(arrays) if small else _no_sample(data.name)
  return DataSource(sample, tuple(arrays["image"].shape[1:]), float(sigma_data), None,
                    host_batch=host_batch_fn(arrays, data.random_flip))

