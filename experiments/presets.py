"""Named configurations: the paper's published runs and CPU-sized ones.

A preset only sets defaults; any CLI flag given with it overrides them.
``paper_*`` presets reproduce the official configuration (paper-notes.md,
section 3) and are meant for a TPU/GPU with ``--data-source tfds``;
``cpu_*`` presets are the ones measured on 2 CPU cores in RESULTS.md.
"""

from __future__ import annotations

F2_DENSITY = [1 / 15, 1 / 7, 1 / 3]  # F2 keeps 1/15, 1/7, 1/3 per layer.

_CONV7 = dict(model='conv7', batch_size=50, lr=1e-3, lr_schedule='exp:0.95',
              augment='mnist', preprocess='scale', permute_biases=True)
_CIFAR_VGG = dict(dataset='cifar10', batch_size=50, epochs=125, lr=1e-3,
                  lr_schedule='step:0.6:10', k='1000', augment='cifar',
                  preprocess='raw', weight_decay=1e-4,
                  weight_decay_scope='kernels')
_RESNET = dict(model='resnet50', dataset='cifar10', batch_size=50,
               epochs=200, lr=1e-3, lr_schedule='resnet', k='400',
               augment='cifar_shift', preprocess='mean', weight_decay=1e-4,
               weight_decay_scope='conv')
_F1 = dict(model='f1', batch_size=128, lr=1e-3, lr_schedule='exp:0.95',
           k='250', init='shared', density=[0.6], shared_value=0.08)
_F2 = dict(model='f2', batch_size=128, lr=1e-3, lr_schedule='exp:0.95',
           k='250', init='shared', density=F2_DENSITY, shared_value=0.03,
           weight_decay=1e-4, weight_decay_scope='hidden')

# {0, w} networks that do not get stuck (RESULTS.md, "Beyond the paper").
# F1: momentum SGD steps (their size
# follows the gradient's) with k = 10 and the whole residual carried, so the
# ranking sees the sum of all pushes since init. F2: LARS steps (momentum SGD
# scaled per layer to lr * |W| / |g|: gradient magnitudes kept within a
# layer, the 100x spread between layers removed), k = 10, and 0.9 of the
# residual carried (a memory of about ten periods); on Fashion the
# validation split picked lr 0.01, k 250 and half the residual instead.
_F1_BEST = dict(inner='momentum', lr=0.1, k='10', carry_residual=1.0)
_F2_BEST = dict(inner='lars', lr=0.1, k='10', carry_residual=0.9)

_LENET300_FASHION = dict(model='lenet300', dataset='fashion_mnist',
                         batch_size=100, epochs=10, k='10')
_SPARSE_BEST = dict(inner='momentum', lr=0.1, k='10', carry_residual=1.0)

PRESETS: dict[str, dict] = {
    # --- the published configurations (for Colab TPU / GPU) ---------------
    'paper_conv7_mnist': dict(_CONV7, dataset='mnist', epochs=45, k='1200'),
    'paper_conv2_cifar10': dict(_CIFAR_VGG, model='conv2'),
    'paper_conv4_cifar10': dict(_CIFAR_VGG, model='conv4'),
    'paper_conv13_cifar10': dict(_CIFAR_VGG, model='conv13'),
    # The same with the normalisation bug fixed (x/255 minus the mean).
    'paper_conv4_cifar10_corrected': dict(_CIFAR_VGG, model='conv4',
                                          preprocess='mean'),
    'paper_resnet50_cifar10': dict(_RESNET),
    'paper_resnet50_cifar10_pruned30': dict(_RESNET, k='800', init='sparse',
                                            density=[0.7]),
    'paper_resnet50_cifar10_pruned50': dict(_RESNET, k='800', init='sparse',
                                            density=[0.5]),
    'paper_resnet50_cifar10_pruned70': dict(_RESNET, k='800', init='sparse',
                                            density=[0.3]),
    'paper_f1_mnist': dict(_F1, dataset='mnist', epochs=10),
    'paper_f2_mnist': dict(_F2, dataset='mnist', epochs=25),
    # --- CPU-sized (2 cores), measured in RESULTS.md -----------------------
    'cpu_lenet300_mnist5k': dict(model='lenet300', dataset='mnist5k',
                                 batch_size=50, epochs=20, k='20'),
    'cpu_lenet300_fashion': dict(model='lenet300', dataset='fashion_mnist',
                                 batch_size=100, epochs=10, k='10'),
    'cpu_conv7_mnist5k': dict(_CONV7, dataset='mnist5k', epochs=15, k='40'),
    'cpu_conv7_fashion': dict(_CONV7, dataset='fashion_mnist', epochs=2,
                              k='50', augment='none'),
    'cpu_f1_fashion': dict(_F1, dataset='fashion_mnist', epochs=10),
    'cpu_f2_fashion': dict(_F2, dataset='fashion_mnist', epochs=25),
    # mnist5k has 31 steps of 128 per epoch instead of MNIST's 469: the
    # paper's number of steps and per-step lr decay (0.95 per 469 steps).
    'cpu_f1_mnist5k': dict(_F1, dataset='mnist5k', epochs=150,
                           lr_schedule='exp:0.9966'),
    'cpu_f2_mnist5k': dict(_F2, dataset='mnist5k', epochs=375,
                           lr_schedule='exp:0.9966'),
    # LaPerm options that un-stick the {0, w} networks, tuned on a validation
    # split of the training set (RESULTS.md, "Beyond the paper"). Each is
    # the paper preset above plus what was changed.
    'cpu_f1_mnist5k_best': dict(_F1, dataset='mnist5k', epochs=150,
                                lr_schedule='exp:0.9966', **_F1_BEST),
    'cpu_f2_mnist5k_best': dict(_F2, dataset='mnist5k', epochs=375,
                                lr_schedule='exp:0.9966', **_F2_BEST),
    'cpu_f1_fashion_best': dict(_F1, dataset='fashion_mnist', epochs=10,
                                **dict(_F1_BEST, lr=0.01)),
    'cpu_f2_fashion_best': dict(_F2, dataset='fashion_mnist', epochs=25,
                                **dict(_F2_BEST, lr=0.01, k='250',
                                       carry_residual=0.5)),
    # Sparse LaPerm, the recipes chosen on the validation split (RESULTS.md,
    # "Sparse LaPerm as dynamic sparse training"): momentum SGD inside, lr
    # 0.1, the whole residual carried; k 2 at 70% sparsity, k 10 at 50%
    # (where smaller k was not tried).
    'cpu_lenet300_fashion_sparse70_best': dict(
        _LENET300_FASHION, init='sparse', density=[0.3],
        first_layer_min_density=0.0, **dict(_SPARSE_BEST, k='2')),
    'cpu_lenet300_fashion_sparse50_best': dict(
        _LENET300_FASHION, init='sparse', density=[0.5],
        first_layer_min_density=0.0, **_SPARSE_BEST),
    # The paper's Conv7 configuration on Fashion-MNIST, for a GPU
    # (benchmarks/gpu.py runs it beside Adam).
    'gpu_conv7_fashion': dict(_CONV7, dataset='fashion_mnist', epochs=45,
                              k='1200'),
    # Tiny, for smoke tests and the notebook's CPU check.
    'tiny_digits': dict(model='lenet300', dataset='digits', batch_size=32,
                        epochs=1, k='5'),
    # A Vision Transformer (experiments/vit.py) on 10,000 Fashion-MNIST
    # images, k from the validation sweep of RESULTS.md, and its tiny CI
    # check on the 8x8 digits.
    'cpu_vit_fashion': dict(model='vit', dataset='fashion_mnist',
                            train_subset=10000, batch_size=100, epochs=3,
                            k='1ep'),
    'tiny_vit_digits': dict(model='vit_tiny', dataset='digits', batch_size=32,
                            epochs=2, k='1ep', lr=3e-3),
}
