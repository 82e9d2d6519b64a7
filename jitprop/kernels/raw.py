"""The raw compiled kernels, without argument checks.

These are the Numba dispatchers themselves.  Call them from your own
``@njit`` code (they compose like any compiled function), or from Python when
you have already checked the arguments: they assume C-contiguous arrays of
one float dtype with the shapes given in each docstring, and out-of-shape
arguments make them read or write outside the buffers.  The checked versions
with the same names live in :mod:`jitprop.kernels`.  ``lstm_workspace_shapes``
(plain Python) gives the shapes the LSTM kernels expect.

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
    OPT_ADAM,
    OPT_SGD,
    activation_backward,
    activation_forward,
    adam_scalars,
    adam_step,
    adam_step_serial,
    bias_grad,
    clip_grad_norm,
    dense_act_forward,
    dense_backward,
    dense_backward_params,
    dense_forward,
    dropout_apply,
    dropout_apply_serial,
    dropout_key,
    PAR_MIN,
    SMALL_MM,
    activation_backward_serial,
    activation_forward_serial,
    dense_act_forward_serial,
    dense_relu_forward_serial,
    dense_backward_params_serial,
    dense_backward_serial,
    mlp_train_steps,
    mse_loss_serial,
    sgd_step_serial,
    softmax_cross_entropy_serial,
    mse_loss,
    relu_backward,
    relu_backward_serial,
    relu_forward,
    scale_inplace,
    segment_norms,
    sgd_step,
    sigmoid_backward,
    sigmoid_backward_serial,
    sigmoid_forward,
    softmax_cross_entropy,
    sum_squares,
    tanh_backward,
    tanh_backward_serial,
    tanh_forward,
)
from ._recurrent import (  # noqa: F401
    gru_backward,
    gru_cell_backward,
    gru_cell_forward,
    gru_forward,
    lstm_backward,
    lstm_cell_backward,
    lstm_cell_forward,
    lstm_forward,
)
from ._recurrent_shapes import absent, gru_workspace_shapes, lstm_workspace_shapes  # noqa: F401
from ._embedding import embedding_backward, embedding_forward  # noqa: F401
