"""The raw compiled kernels, without argument checks.

These are the Numba dispatchers themselves.  Call them from your own
``@njit`` code (they compose like any compiled function), or from Python when
you have already checked the arguments: they assume C-contiguous arrays of
one float dtype with the shapes given in each docstring, and out-of-shape
arguments make them read or write outside the buffers.  The checked versions
with the same names live in :mod:`jitprop.kernels`.

Each parallel kernel has a serial twin, ``<name>_serial``: what the kernel
runs below ``PAR_MIN`` elements, bitwise, with no parallel loop to compile.
"""

from ._core import (  # noqa: F401
    ACT_IDENTITY,
    ACT_RELU,
    ACT_SIGMOID,
    ACT_TANH,
    CLIP_EPS,
    LOSS_MSE,
    LOSS_XENT,
    activation_backward,
    activation_forward,
    bias_grad,
    clip_grad_norm,
    dense_act_forward,
    dense_backward,
    dense_backward_params,
    dense_forward,
    PAR_MIN,
    activation_backward_serial,
    activation_forward_serial,
    dense_act_forward_serial,
    dense_backward_params_serial,
    dense_backward_serial,
    mlp_train_steps,
    mse_loss_serial,
    sgd_step_serial,
    softmax_cross_entropy_serial,
    mse_loss,
    relu_backward,
    relu_forward,
    scale_inplace,
    segment_norms,
    sgd_step,
    sigmoid_backward,
    sigmoid_forward,
    softmax_cross_entropy,
    sum_squares,
    tanh_backward,
    tanh_forward,
)
