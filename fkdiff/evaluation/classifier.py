"""A small CNN classifier for image samples: condition adherence and a feature space.

Used offline on the digits (8×8×1): trained in seconds on the train split, it scores generated
samples by the accuracy on the requested class and embeds them (its penultimate layer) for a
Fréchet distance (:mod:`fkdiff.evaluation.frechet`) — the digits' stand-in for Inception/FID.
Training is plain optax on in-memory arrays; parameters are saved with orbax.
"""

import os
from typing import Any, NamedTuple, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array


class Classifier(nn.Module):
  """``x (B, H, W, C) in [-1, 1] -> (logits (B, num_classes), features (B, feature_dim))``."""
  num_classes: int = 10
  width: int = 32
  feature_dim: int = 64

  @nn.compact
  def __call__(self, x: Array) -> Tuple[Array, Array]:
    h = nn.gelu(nn.Conv(self.width, (3, 3))(x))
    h = nn.gelu(nn.Conv(2 * self.width, (3, 3), strides=2)(h))
    h = nn.gelu(nn.Conv(2 * self.width, (3, 3))(h))
    h = h.reshape(h.shape[0], -1)
    features = nn.gelu(nn.Dense(self.feature_dim)(h))
    return nn.Dense(self.num_classes)(features), features


class ClassifierRun(NamedTuple):
  """A trained classifier: ``params`` and its held-out ``test_accuracy``."""
  model: Classifier
  params: Any
  test_accuracy: float


def train_classifier(key: Array, train: dict, test: dict, num_classes: int = 10,
                     num_steps: int = 1500, batch_size: int = 128, noise_std: float = 0.1,
                     learning_rate: float = 2e-3) -> ClassifierRun:
  """Trains :class:`Classifier` with Adam on ``train`` and reports accuracy on ``test``.

  Args:
    key: PRNG key (initialisation, batches, augmentation).
    train, test: ``{'x': float (N, H, W, C) in [-1, 1], 'label': int (N,)}``.
    noise_std: Gaussian noise added to training inputs, so that slightly noisy generated samples
      are classified as the clean images they resemble.
  """
  model = Classifier(num_classes)
  x_train, y_train = jnp.asarray(train["x"]), jnp.asarray(train["label"])
  k_init, k_steps = jax.random.split(key)
  tx = optax.adam(optax.cosine_decay_schedule(learning_rate, num_steps))
  params, opt_state = jax.jit(lambda k: (p := model.init(k, x_train[:1]), tx.init(p)))(k_init)

  def loss_fn(params, x, y):
    logits, _ = model.apply(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  # One jitted step in a Python loop: XLA:CPU ran this network's convolutions ~30× slower
  # inside a lax.scan (measured with jax 0.10.2).
  @jax.jit
  def step(params, opt_state, key, x_train, y_train):   # data as arguments, not constants.
    k_idx, k_noise = jax.random.split(key)
    idx = jax.random.randint(k_idx, (batch_size,), 0, x_train.shape[0])
    x = x_train[idx] + noise_std * jax.random.normal(k_noise, x_train[idx].shape)
    grads = jax.grad(loss_fn)(params, x, y_train[idx])
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  for key in jax.random.split(k_steps, num_steps):
    params, opt_state = step(params, opt_state, key, x_train, y_train)
  accuracy = float(np.mean(predict(model, params, test["x"]) == np.asarray(test["label"])))
  return ClassifierRun(model, params, accuracy)


def _apply(model: Classifier, params, x, batch: int = 512):
  x = jnp.asarray(x)
  apply = jax.jit(model.apply)
  outs = [apply(params, x[i:i + batch]) for i in range(0, x.shape[0], batch)]
  return (np.concatenate([np.asarray(o[0]) for o in outs]),
          np.concatenate([np.asarray(o[1]) for o in outs]))


def predict(model: Classifier, params, x) -> np.ndarray:
  """Predicted class of each image ``x (N, H, W, C)``; ``(N,)`` ints."""
  return np.argmax(_apply(model, params, x)[0], axis=-1)


def logits_and_features(model: Classifier, params, x) -> Tuple[np.ndarray, np.ndarray]:
  """``(logits (N, num_classes), features (N, feature_dim))`` of images ``x (N, H, W, C)``."""
  return _apply(model, params, x)


def save(path: str, run: ClassifierRun) -> None:
  """Writes the parameters and test accuracy to ``path`` (an orbax checkpoint directory)."""
  import orbax.checkpoint as ocp
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(os.path.abspath(path), {"params": run.params,
                                      "test_accuracy": np.float32(run.test_accuracy)})


def load(path: str, example_x, num_classes: int = 10) -> ClassifierRun:
  """Reads a classifier written by :func:`save` (``example_x``: one batch, for the shapes)."""
  import orbax.checkpoint as ocp
  model = Classifier(num_classes)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])   # not the saver's devices
  shapes = {"params": jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(example_x[:1])),
            "test_accuracy": jax.ShapeDtypeStruct((), np.float32)}
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                          shapes)
  with ocp.StandardCheckpointer() as ckpt:
    tree = ckpt.restore(os.path.abspath(path), abstract)
  return ClassifierRun(model, tree["params"], float(tree["test_accuracy"]))
