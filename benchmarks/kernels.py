"""Kernel shapes of the benchmarked models (Flax/Keras layouts)."""


def lenet_300_100() -> list[tuple[int, ...]]:
  """Dense kernels (in, out) of LeNet-300-100."""
  return [(784, 300), (300, 100), (100, 10)]


def conv7() -> list[tuple[int, ...]]:
  """Conv7 (MNIST) conv kernels (kh, kw, in, out) and its dense head."""
  return [(3, 3, 1, 32), (3, 3, 32, 32), (5, 5, 32, 32), (3, 3, 32, 64),
          (3, 3, 64, 64), (5, 5, 64, 64), (4, 4, 64, 128), (128, 10)]


def cifar_resnet(n: int = 8) -> list[tuple[int, ...]]:
  """CIFAR ResNet v1 (depth 6n+2; n=8 is the paper's "ResNet50") kernels."""
  shapes = [(3, 3, 3, 16)]
  width_in = 16
  for width in (16, 32, 64):
    for block in range(n):
      shapes.append((3, 3, width_in, width))
      shapes.append((3, 3, width, width))
      if width_in != width:
        shapes.append((1, 1, width_in, width))  # downsampling shortcut
      width_in = width
    del block
  shapes.append((64, 10))
  return shapes


def square(size: int) -> list[tuple[int, ...]]:
  return [(size, size)]


MODELS = {
    'LeNet-300-100': lenet_300_100,
    'Conv7': conv7,
    'CIFAR ResNet n=8': cifar_resnet,
    'dense 2048x2048': lambda: square(2048),
    'dense 4096x4096': lambda: square(4096),
}
