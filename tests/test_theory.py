"""Numerical checks of the theory answers in the report (report/theory.typ).

Q1  convolution commutes with shifts (circular padding <-> circular shift, 1-D and 2-D);
Q2  an additive constant and a pointwise non-linearity commute with shifts, stride-2 pooling does not
    (the exact counter-example printed in the report), and a CNN is equivariant only to shifts by
    multiples of the product of its strides;
Q3  the Jacobians of x + b, W x and of conv1d / conv2d layers equal autograd's and have the stated
    structure: (doubly block) Toeplitz / circulant matrices w.r.t. the input, im2col patches w.r.t.
    the weights.
Every check has a negative control, so a wrong statement would make a test fail.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian


@pytest.fixture(autouse=True)
def _seed_and_float64():
    """float64 for exact comparisons without float32 round-off noise, restored after each test so
    the rest of the suite keeps torch's float32 default."""
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def circ_conv1d(x, w):
    """Cross-correlation (PyTorch's conv) with circular padding; odd kernel, 'same' output size."""
    p = w.shape[-1] // 2
    return F.conv1d(F.pad(x, (p, p), mode="circular"), w)


def circ_conv2d(x, w):
    p = w.shape[-1] // 2
    return F.conv2d(F.pad(x, (p, p, p, p), mode="circular"), w)


# ----------------------------------------------------------------------------- Q1: LTI
@pytest.mark.parametrize("shift", [1, 3, -2, 7])
def test_q1_conv1d_commutes_with_circular_shift(shift):
    x, w = torch.randn(1, 2, 16), torch.randn(3, 2, 5)
    lhs = circ_conv1d(torch.roll(x, shift, dims=-1), w)   # conv(shift(x))
    rhs = torch.roll(circ_conv1d(x, w), shift, dims=-1)   # shift(conv(x))
    torch.testing.assert_close(lhs, rhs)


@pytest.mark.parametrize("shift", [(1, 0), (2, -3), (5, 4)])
def test_q1_conv2d_commutes_with_circular_shift(shift):
    x, w = torch.randn(1, 3, 12, 10), torch.randn(4, 3, 3, 3)
    lhs = circ_conv2d(torch.roll(x, shift, dims=(-2, -1)), w)
    rhs = torch.roll(circ_conv2d(x, w), shift, dims=(-2, -1))
    torch.testing.assert_close(lhs, rhs)


def test_q1_conv_is_linear():
    x, y, w = torch.randn(1, 1, 16), torch.randn(1, 1, 16), torch.randn(1, 1, 5)
    torch.testing.assert_close(circ_conv1d(2 * x - 3 * y, w), 2 * circ_conv1d(x, w) - 3 * circ_conv1d(y, w))


def test_q1_negative_control_zero_padding_breaks_it_at_the_border():
    """With zero padding the identity holds only away from the borders (the report says so)."""
    x, w = torch.randn(1, 1, 16), torch.randn(1, 1, 5)
    lhs = F.conv1d(torch.roll(x, 1, dims=-1), w, padding=2)
    rhs = torch.roll(F.conv1d(x, w, padding=2), 1, dims=-1)
    assert not torch.allclose(lhs, rhs)
    torch.testing.assert_close(lhs[..., 3:-2], rhs[..., 3:-2])  # interior: still equal


# ----------------------------------------------------------------------------- Q2: which layers are TI
@pytest.mark.parametrize("shift", [1, 4, -3])
def test_q2a_additive_constant_commutes_with_shift(shift):
    x = torch.randn(2, 3, 20)
    c = torch.randn(1, 3, 1)  # a constant per channel (a conv bias), the same at every position
    torch.testing.assert_close(torch.roll(x, shift, -1) + c, torch.roll(x + c, shift, -1))


def test_q2a_negative_control_position_dependent_offset_is_not_ti():
    x, b = torch.randn(1, 1, 20), torch.randn(1, 1, 20)  # different offset per position
    assert not torch.allclose(torch.roll(x, 1, -1) + b, torch.roll(x + b, 1, -1))


@pytest.mark.parametrize("fn", [torch.relu, torch.sigmoid, torch.tanh, lambda t: t ** 2])
def test_q2b_pointwise_nonlinearity_commutes_with_shift(fn):
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fn(torch.roll(x, (2, -1), (-2, -1))), torch.roll(fn(x), (2, -1), (-2, -1)))


# The counter-example printed in the report (Q2c): keep the two in sync.
POOL_X = [1.0, 2.0, 0.0, 0.0, 0.0, 0.0]
POOL_Y = [2.0, 0.0, 0.0]              # maxpool_2(x)
POOL_X_SHIFTED = [0.0, 1.0, 2.0, 0.0, 0.0, 0.0]
POOL_Y_SHIFTED = [1.0, 2.0, 0.0]      # maxpool_2(shift_1 x)
AVG_Y, AVG_Y_SHIFTED = [1.5, 0.0, 0.0], [0.5, 1.0, 0.0]


def _pool(x, kind="max"):
    t = torch.tensor(x).view(1, 1, -1)
    return (F.max_pool1d if kind == "max" else F.avg_pool1d)(t, 2).flatten().tolist()


def test_q2c_strided_pooling_counter_example():
    assert torch.roll(torch.tensor(POOL_X), 1).tolist() == POOL_X_SHIFTED   # circular shift ...
    assert [0.0] + POOL_X[:-1] == POOL_X_SHIFTED                            # ... = zero-filled shift
    assert _pool(POOL_X) == POOL_Y
    assert _pool(POOL_X_SHIFTED) == POOL_Y_SHIFTED
    assert _pool(POOL_X, "avg") == AVG_Y and _pool(POOL_X_SHIFTED, "avg") == AVG_Y_SHIFTED
    y = torch.tensor(POOL_Y)
    for k in range(len(POOL_Y)):  # not a (circular) shift of the pooled original, by any amount
        assert torch.roll(y, k).tolist() != POOL_Y_SHIFTED
    assert sorted(POOL_Y) != sorted(POOL_Y_SHIFTED)  # not even the same multiset of values


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_q2c_pooling_is_equivariant_to_shifts_by_multiples_of_the_stride(kind):
    pool = F.max_pool1d if kind == "max" else F.avg_pool1d
    x = torch.randn(1, 2, 24)
    for k in (1, 2, -3):  # input shift 2k -> output shift k
        torch.testing.assert_close(pool(torch.roll(x, 2 * k, -1), 2), torch.roll(pool(x, 2), k, -1))
    y1 = pool(torch.roll(x, 1, -1), 2)  # an odd shift: no output shift matches
    assert all(not torch.allclose(y1, torch.roll(pool(x, 2), k, -1)) for k in range(12))


def _tiny_cnn(x, w1, w2):
    """conv(circular) -> +bias -> ReLU -> maxpool2 -> conv -> ReLU -> maxpool2: total stride 4."""
    h = F.max_pool1d(torch.relu(circ_conv1d(x, w1) + 0.1), 2)
    return F.max_pool1d(torch.relu(circ_conv1d(h, w2)), 2)


def test_q2d_cnn_equivariant_to_multiples_of_stride_product_only():
    x, w1, w2 = torch.randn(1, 1, 32), torch.randn(4, 1, 3), torch.randn(4, 4, 3)
    y = _tiny_cnn(x, w1, w2)  # (1, 4, 8)
    for k in (1, 2, -1):  # shift by 4k -> output shift k
        torch.testing.assert_close(_tiny_cnn(torch.roll(x, 4 * k, -1), w1, w2), torch.roll(y, k, -1))
    for s in (1, 2, 3):  # other shifts: the feature map is not a shifted copy
        ys = _tiny_cnn(torch.roll(x, s, -1), w1, w2)
        assert all(not torch.allclose(ys, torch.roll(y, k, -1)) for k in range(y.shape[-1]))
    # global average pooling head: exactly invariant to shifts by multiples of 4, only roughly otherwise
    gap = lambda t: _tiny_cnn(t, w1, w2).mean(-1)  # noqa: E731
    torch.testing.assert_close(gap(torch.roll(x, 8, -1)), gap(x))
    assert not torch.allclose(gap(torch.roll(x, 1, -1)), gap(x))
    # flatten + FC head: not invariant even to the shifts the conv part is equivariant to
    fc = torch.randn(10, y.numel())
    head = lambda t: fc @ _tiny_cnn(t, w1, w2).flatten()  # noqa: E731
    assert not torch.allclose(head(torch.roll(x, 4, -1)), head(x))


# ----------------------------------------------------------------------------- Q3: Jacobians
def test_q3a_bias_jacobian_is_identity():
    x, b = torch.randn(5), torch.randn(5)
    jx, jb = jacobian(lambda x, b: x + b, (x, b))
    torch.testing.assert_close(jx, torch.eye(5))
    torch.testing.assert_close(jb, torch.eye(5))
    # a per-channel bias broadcast over L positions: d vec(y) / d b = I_C kron 1_L
    xc, bc = torch.randn(3, 4), torch.randn(3)
    jbc = jacobian(lambda b: (xc + b[:, None]).flatten(), bc)
    torch.testing.assert_close(jbc, torch.kron(torch.eye(3), torch.ones(4, 1)))


def test_q3b_matmul_jacobians():
    m, n = 4, 6
    W, x = torch.randn(m, n), torch.randn(n)
    jW, jx = jacobian(lambda W, x: W @ x, (W, x))   # jW: (m, m, n)
    torch.testing.assert_close(jx, W)
    jW_flat = jW.reshape(m, m * n)                   # w.r.t. the row-major vec(W)
    torch.testing.assert_close(jW_flat, torch.kron(torch.eye(m), x[None, :]))  # I_m kron x^T
    for i in range(m):  # block structure: row i holds x^T in block i, zeros elsewhere
        torch.testing.assert_close(jW[i, i], x)
        assert torch.count_nonzero(jW[i]) == torch.count_nonzero(x)
    # batched Y = X W^T: d vec(Y) / d vec(X) = I_B kron W
    X = torch.randn(3, n)
    jX = jacobian(lambda X: (X @ W.T).flatten(), X).reshape(3 * m, 3 * n)
    torch.testing.assert_close(jX, torch.kron(torch.eye(3), W))


def toeplitz_1d(w: torch.Tensor, n: int, padding: int = 0, stride: int = 1, circular: bool = False):
    """The (n_out, n) matrix T with T[i, j] = w[j - i*stride + padding] (0 outside the kernel):
    PyTorch's conv1d (cross-correlation) of a length-n signal, built from the kernel alone.
    circular=True wraps the column index modulo n: a circulant matrix (for stride 1)."""
    K = w.shape[0]
    n_out = (n + 2 * padding - K) // stride + 1
    T = torch.zeros(n_out, n)
    for i in range(n_out):
        for k in range(K):
            j = i * stride + k - padding
            if circular:
                T[i, j % n] += w[k]
            elif 0 <= j < n:
                T[i, j] = w[k]
    return T


@pytest.mark.parametrize("padding,stride", [(0, 1), (2, 1), (1, 2)])
def test_q3c_conv1d_input_jacobian_is_toeplitz(padding, stride):
    n, w = 10, torch.randn(5)
    x = torch.randn(n)
    f = lambda x: F.conv1d(x.view(1, 1, n), w.view(1, 1, -1), padding=padding, stride=stride).flatten()  # noqa
    J = jacobian(f, x)
    T = toeplitz_1d(w, n, padding, stride)
    torch.testing.assert_close(J, T)
    if stride == 1:  # Toeplitz: constant along every diagonal
        for i in range(1, J.shape[0]):
            torch.testing.assert_close(J[i, 1:], J[i - 1, :-1])
    else:  # stride s = the stride-1 matrix with only every s-th row kept
        torch.testing.assert_close(J, toeplitz_1d(w, n, padding, 1)[::stride])
    torch.testing.assert_close(f(x), T @ x)  # the layer *is* this matrix
    # negative control: the unflipped "true convolution" matrix is not PyTorch's conv
    assert not torch.allclose(J, toeplitz_1d(w.flip(0), n, padding, stride))


def test_q3c_circular_conv1d_jacobian_is_circulant():
    n, w = 8, torch.randn(3)
    J = jacobian(lambda x: circ_conv1d(x.view(1, 1, n), w.view(1, 1, -1)).flatten(), torch.randn(n))
    torch.testing.assert_close(J, toeplitz_1d(w, n, padding=1, circular=True))
    for i in range(1, n):  # circulant: each row is the previous one rotated right by one
        torch.testing.assert_close(J[i], torch.roll(J[i - 1], 1))


def test_q3c_multichannel_conv1d_jacobian_is_block_toeplitz():
    c_in, c_out, n, K = 2, 3, 7, 3
    w, x = torch.randn(c_out, c_in, K), torch.randn(c_in, n)
    J = jacobian(lambda x: F.conv1d(x[None], w, padding=1).flatten(), x).reshape(c_out * n, c_in * n)
    blocks = torch.cat([torch.cat([toeplitz_1d(w[o, c], n, 1) for c in range(c_in)], 1) for o in range(c_out)], 0)
    torch.testing.assert_close(J, blocks)


def doubly_block_toeplitz(w: torch.Tensor, H: int, W: int, padding: int = 0):
    """Matrix of a single-channel conv2d on row-major vec(x): block (i1, j1) is the 1-D Toeplitz matrix
    of kernel row k1 = j1 - i1 + padding (zero block if outside the kernel)."""
    K1 = w.shape[0]
    H_out = H + 2 * padding - K1 + 1
    W_out = W + 2 * padding - w.shape[1] + 1
    M = torch.zeros(H_out * W_out, H * W)
    for i1 in range(H_out):
        for j1 in range(H):
            k1 = j1 - i1 + padding
            if 0 <= k1 < K1:
                M[i1 * W_out:(i1 + 1) * W_out, j1 * W:(j1 + 1) * W] = toeplitz_1d(w[k1], W, padding)
    return M, H_out, W_out


@pytest.mark.parametrize("padding", [0, 1])
def test_q3c_conv2d_input_jacobian_is_doubly_block_toeplitz(padding):
    H, W, w = 5, 6, torch.randn(3, 3)
    x = torch.randn(H, W)
    J = jacobian(lambda x: F.conv2d(x.view(1, 1, H, W), w.view(1, 1, 3, 3), padding=padding).flatten(), x)
    J = J.reshape(-1, H * W)
    M, H_out, W_out = doubly_block_toeplitz(w, H, W, padding)
    torch.testing.assert_close(J, M)
    block = lambda a, b: J[a * W_out:(a + 1) * W_out, b * W:(b + 1) * W]  # noqa: E731
    for a in range(1, H_out):  # blocks constant along block diagonals ...
        for b in range(1, H):
            torch.testing.assert_close(block(a, b), block(a - 1, b - 1))
    for a in range(H_out):      # ... and each block is itself Toeplitz
        for b in range(H):
            B = block(a, b)
            for i in range(1, W_out):
                torch.testing.assert_close(B[i, 1:], B[i - 1, :-1])
    assert not torch.allclose(J, doubly_block_toeplitz(w.flip(0, 1), H, W, padding)[0])  # negative control


def test_q3c_conv1d_weight_jacobian_is_patch_matrix():
    n, K = 9, 4
    x, w = torch.randn(n), torch.randn(K)
    J = jacobian(lambda w: F.conv1d(x.view(1, 1, n), w.view(1, 1, K)).flatten(), w)
    patches = torch.stack([x[i:i + K] for i in range(n - K + 1)])  # row i = (x_i, ..., x_{i+K-1})
    torch.testing.assert_close(J, patches)


def test_q3c_conv2d_weight_jacobian_is_im2col():
    c_in, c_out, H, W, K = 2, 3, 5, 6, 3
    x, w, b = torch.randn(1, c_in, H, W), torch.randn(c_out, c_in, K, K), torch.randn(c_out)
    jw, jb = jacobian(lambda w, b: F.conv2d(x, w, b, padding=1).flatten(), (w, b))
    L = H * W  # padding 1, stride 1: same size
    jw = jw.reshape(c_out * L, c_out * c_in * K * K)
    U = F.unfold(x, K, padding=1)[0].T.contiguous()  # im2col: (L, c_in*K*K), row l = receptive field of position l
    torch.testing.assert_close(jw, torch.kron(torch.eye(c_out), U))  # each output channel sees its own weights
    torch.testing.assert_close(jb.reshape(c_out * L, c_out), torch.kron(torch.eye(c_out), torch.ones(L, 1)))
    # and the forward pass is that matrix product: Y = W_mat U^T + b
    y = F.conv2d(x, w, b, padding=1).reshape(c_out, L)
    torch.testing.assert_close(y, w.reshape(c_out, -1) @ U.T + b[:, None])
