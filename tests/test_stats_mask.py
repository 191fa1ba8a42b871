"""Token masks in layer_stats: the oracle against an independent construction, every backend
against the oracle bit for bit, the contract's edge cases, and the errors for bad masks.

Shapes: SMALL slices (n < _CPU_MIN_N) take the batched torch path on CPU, LARGE ones the numba
CPU path (one read per slice, slices in parallel); both are checked.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from _cases import DTYPE_IDS, DTYPES, SPECIAL, assert_stats_equal, special, strided_views

from massact import layer_stats, layer_stats_many, reference_layer_stats
from massact.stats._torch_path import _CPU_MIN_N

SMALL = (4, 9, 11)  # batched torch path (n = 99)
LARGE = (4, 128, 144)  # CPU path (n = 18432: rows of two 64-value blocks and 16 more)
LARGE_ODD = (4, 129, 131)  # CPU path, odd n = 16899: rows of two blocks and 3 more
assert SMALL[-2] * SMALL[-1] < _CPU_MIN_N <= min(LARGE[-2] * LARGE[-1], 129 * 131)
SHAPES = [SMALL, LARGE, LARGE_ODD]
SHAPE_IDS = ["small", "large", "large-odd"]


def random_mask(lead, seed: int = 0, p: float = 0.7) -> torch.Tensor:
    """[..., S] bool with a fully masked first slice and a fully real last one."""
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(lead, generator=g) < p
    flat = m.reshape(-1, lead[-1])
    flat[0] = False
    flat[-1] = True
    return m


def independent_stats(h: torch.Tensor, mask: torch.Tensor, k: int):
    """Top-k (values, flat indices) and lower median per slice, built without the oracle: real
    tokens gathered into a shorter slice, numpy lexsort (by -|h|, then index), torch.median."""
    S, d = h.shape[-2:]
    x = h.abs().float().reshape(-1, S, d)
    out = []
    for b, real in enumerate(mask.reshape(-1, S)):
        tokens = real.nonzero().squeeze(-1)
        a = x[b, tokens].reshape(-1)  # [S_real * d]
        if a.numel() == 0:
            out.append(None)
            continue
        order = np.lexsort((np.arange(a.numel()), -a.numpy()))[:k]
        flat = tokens[torch.from_numpy(order) // d] * d + torch.from_numpy(order) % d
        out.append((a[order], flat, torch.median(a)))
    return out


# ---- the oracle ------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 5, 24])
def test_oracle_against_gathered_real_tokens(k):
    h = special("ties", torch.float32, (5, 8, 3))  # many equal |h|: the tie rule matters
    mask = random_mask((5, 8), seed=k)
    ref = reference_layer_stats(h, k, mask=mask)
    for b, want in enumerate(independent_stats(h, mask, k)):
        if want is None:  # no real token
            assert ref.top[b].isnan().all() and ref.median[b].isnan() and ref.ratio[b].isnan()
            assert (ref.top_token[b] == -1).all() and (ref.top_channel[b] == -1).all()
            continue
        vals, flat, median = want
        m = vals.numel()  # < k when the slice has fewer than k real values
        assert torch.equal(ref.top[b, :m], vals) and ref.top[b, m:].isnan().all()
        assert torch.equal(ref.top_token[b, :m] * 3 + ref.top_channel[b, :m], flat)
        assert (ref.top_token[b, m:] == -1).all() and (ref.top_channel[b, m:] == -1).all()
        assert torch.equal(ref.median[b], median)


def test_oracle_worked_example():
    h = torch.tensor([[[1.0, -9.0], [5.0, 2.0], [-3.0, 4.0]]])  # [1, S=3, d=2]
    st = reference_layer_stats(h, k=5, mask=torch.tensor([[True, False, True]]))
    assert torch.equal(st.top.nan_to_num(nan=-7.0), torch.tensor([[9.0, 4.0, 3.0, 1.0, -7.0]]))
    assert torch.equal(st.top_token, torch.tensor([[0, 2, 2, 0, -1]]))
    assert torch.equal(st.top_channel, torch.tensor([[1, 1, 0, 0, -1]]))
    assert st.median.item() == 3.0  # real |h| 1, 3, 4, 9: rank (4 - 1) // 2 = 1
    assert st.ratio.item() == 3.0


def test_all_true_mask_is_no_mask():
    h = torch.randn(3, 10, 7)
    assert_stats_equal(
        reference_layer_stats(h, 4, mask=torch.ones(3, 10, dtype=torch.bool)),
        reference_layer_stats(h, 4),
    )


# ---- the torch path (batched and numpy CPU) against the oracle -----------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_torch_path_random_masks(shape, dtype):
    h = torch.randn(shape).to(dtype)
    mask = random_mask(shape[:-1])
    for k in (1, 3, 17):
        want = reference_layer_stats(h, k, mask=mask)
        assert_stats_equal(layer_stats(h, k, mask=mask, backend="torch"), want)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", SPECIAL)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_torch_path_special_values_masked(shape, case, dtype):
    h = special(case, dtype, shape)
    for v in strided_views(h).values():
        m = random_mask(v.shape[:-1], seed=1, p=0.5)
        m[1, 1:] = False  # slice 1: one real token (k > n_real where d < 5)
        want = reference_layer_stats(v, 5, mask=m)
        assert_stats_equal(layer_stats(v, 5, mask=m, backend="torch"), want)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_fewer_real_values_than_k(shape):
    h = torch.randn(shape)
    mask = torch.zeros(shape[:-1], dtype=torch.bool)
    mask[0, 2] = True  # slice 0: one token (d values), k = d + 3
    mask[1, :2] = True  # slice 1: two tokens
    k = shape[-1] + 3
    st = layer_stats(h, k, mask=mask, backend="torch")
    assert_stats_equal(st, reference_layer_stats(h, k, mask=mask))
    d = shape[-1]
    assert not st.top[0, :d].isnan().any() and st.top[0, d:].isnan().all()
    assert (st.top_token[0, :d] == 2).all() and (st.top_token[0, d:] == -1).all()
    assert st.top[2:].isnan().all() and st.median[2:].isnan().all()


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_nan_in_masked_tokens_does_not_count(shape):
    h = torch.randn(shape)
    mask = torch.ones(shape[:-1], dtype=torch.bool)
    mask[:, -1] = False
    h[:, -1] = float("nan")  # a padded position holding garbage
    st = layer_stats(h, 3, mask=mask, backend="torch")
    assert not st.median.isnan().any() and not st.top.isnan().any()
    assert_stats_equal(st, layer_stats(h[:, :-1], 3, backend="torch"))
    h[0, 0, 0] = float("nan")  # a NaN in a real token: that slice's median is NaN
    st = layer_stats(h, 3, mask=mask, backend="torch")
    assert st.median[0].isnan() and not st.median[1:].isnan().any()
    assert_stats_equal(st, reference_layer_stats(h, 3, mask=mask))


NAN_PAYLOADS = {  # quiet, signalling and all-ones NaN patterns: torch ranks them all equal
    torch.float32: [0x7F800001, 0x7FC00000, 0x7FFFFFFF, 0x7FA00000],
    torch.float16: [0x7C01, 0x7E00, 0x7FFF, 0x7D00],
    torch.bfloat16: [0x7F81, 0x7FC0, 0x7FFF, 0x7FA0],
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_nan_payloads_tie_in_index_order(shape, dtype):
    h = torch.randn(shape).to(dtype)
    view = torch.int32 if dtype == torch.float32 else torch.int16
    payloads = torch.tensor(NAN_PAYLOADS[dtype]).to(view)
    line = h.view(view).view(-1)
    line[5 : 5 + 4 * 7 : 7] = payloads.flip(0)  # larger payloads at larger flat indices...
    line[3] = payloads[0]  # ...and the smallest payload first
    mask = random_mask(shape[:-1], seed=3, p=0.9)
    mask.reshape(-1, shape[-2])[0, :] = True  # the NaNs' slice is real
    for m in (None, mask):
        st = layer_stats(h, 4, mask=m, backend="torch")
        assert_stats_equal(st, reference_layer_stats(h, 4, mask=m))
    assert st.top[0].isnan().all() and st.median[0].isnan()


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_padded_batch_equals_unpadded_sequences(shape):
    """Left and right padding with large pad values: the stats of the real tokens alone."""
    B, S, d = shape
    h = torch.randn(shape) * 100  # pad positions hold values that would dominate
    lengths = [S, S // 2, 1, S - 3]
    mask = torch.zeros(B, S, dtype=torch.bool)
    for b, n in enumerate(lengths):
        if b % 2:  # right padding
            mask[b, :n] = True
        else:  # left padding
            mask[b, S - n :] = True
    st = layer_stats(h, 4, mask=mask, backend="torch")
    for b in range(B):
        tokens = mask[b].nonzero().squeeze(-1)
        one = layer_stats(h[b, tokens], 4, backend="torch")
        assert torch.equal(st.top[b], one.top) and torch.equal(st.median[b], one.median)
        assert torch.equal(st.top_token[b], tokens[one.top_token])


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_broadcast_and_integer_masks(shape):
    h = torch.randn(2, *shape).to(torch.bfloat16)  # [2, B, S, d]
    real = torch.rand(shape[-2]) < 0.6  # [S]: the same tokens of every slice
    want = reference_layer_stats(h, 3, mask=real.expand(h.shape[:-1]))
    for m in (real, real.to(torch.int64), real.to(torch.uint8) * 7, real[None, None]):
        assert_stats_equal(layer_stats(h, 3, mask=m, backend="torch"), want)
        assert_stats_equal(reference_layer_stats(h, 3, mask=m), want)
    per_slice = torch.tensor([True, False, True, True])[:, None]  # [B, 1]: whole slices
    st = layer_stats(h, 3, mask=per_slice, backend="torch")
    assert st.median[:, 1].isnan().all() and not st.median[:, [0, 2, 3]].isnan().any()
    assert_stats_equal(st, reference_layer_stats(h, 3, mask=per_slice))


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
def test_cpu_path_leading_dims(masked):
    """No leading dim, and two leading dims that cannot merge (a permuted view): the CPU path
    reads each slice in place."""
    base = torch.randn(3, 128, 2, 144)  # [B1, S, B2, d]
    assert 128 * 144 >= _CPU_MIN_N
    for h in (base[0, :, 0], base.permute(2, 0, 1, 3)):  # [S, d]; [B2, B1, S, d]
        m = random_mask(h.shape[:-1], seed=5) if masked else None
        assert_stats_equal(
            layer_stats(h, 3, mask=m, backend="torch"), reference_layer_stats(h, 3, mask=m)
        )


def test_results_never_alias_the_read_buffers():
    """An earlier result must not change with a later call (nothing shared between calls)."""
    h1, h2 = torch.randn(LARGE), torch.randn(LARGE) * 5
    st1 = layer_stats(h1, 3, backend="torch")
    saved = [x.clone() for x in (st1.top, st1.top_token, st1.median)]
    layer_stats(h2, 3, mask=random_mask(LARGE[:-1]), backend="torch")
    assert all(torch.equal(a, b) for a, b in zip(saved, (st1.top, st1.top_token, st1.median)))


def test_concurrent_calls_from_threads():
    hs = [torch.randn(LARGE) * (i + 1) for i in range(6)]
    masks = [random_mask(LARGE[:-1], seed=i) for i in range(6)]
    got = [None] * 6

    def work(i):
        got[i] = layer_stats(hs[i], 3, mask=masks[i], backend="torch")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(6):
        assert_stats_equal(got[i], reference_layer_stats(hs[i], 3, mask=masks[i]))


# ---- dispatch: layer_stats_many, backends, errors ------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "torch", "reference"])
def test_layer_stats_many_with_one_mask(backend):
    mask = random_mask((2, 9))
    hs = [torch.randn(2, 9, 11), torch.randn(2, 9, 5).half(), torch.randn(2, 9, 600)]
    out = layer_stats_many(hs, 2, mask=mask, backend=backend)
    for got, h in zip(out, hs):
        assert_stats_equal(got, reference_layer_stats(h, 2, mask=mask))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(3, 9, 11), (2, 40, 33)], ids=["one-block", "many-blocks"])
def test_triton_backend_masked(shape, dtype):
    """Through the dispatch (mask validated, broadcast, moved); the kernels' own mask tests are
    in test_kernels.py."""
    h = special("ties", dtype, shape)
    mask = random_mask(shape[:-1])
    for k in (1, 4):
        want = reference_layer_stats(h, k, mask=mask)
        assert_stats_equal(layer_stats(h, k, mask=mask, backend="triton"), want)
    shared = mask[-1].to(torch.int64)  # [S] integer: converted and broadcast by the dispatch
    want = reference_layer_stats(h, 2, mask=shared.bool().expand(mask.shape))
    assert_stats_equal(layer_stats(h, 2, mask=shared, backend="triton"), want)
    # same [B, S]: another d, and the same values with batch-major strides (one launch each)
    hs = [h, torch.randn(*shape[:-1], 5).to(dtype), h.transpose(0, 1).contiguous().transpose(0, 1)]
    for got, x in zip(layer_stats_many(hs, 3, mask=mask, backend="triton"), hs):
        assert_stats_equal(got, reference_layer_stats(x, 3, mask=mask))


@pytest.mark.parametrize(
    ("mask", "error", "match"),
    [
        (torch.ones(2, 5), ValueError, r"bool or integer.*torch.float32.*mask.bool\(\)"),
        (torch.ones(2, 5, dtype=torch.complex64), ValueError, "bool or integer"),
        (torch.ones(2, 4, dtype=torch.bool), ValueError, r"\(2, 4\) does not broadcast.*\(2, 5\)"),
        (torch.ones(3, 2, 5, dtype=torch.bool), ValueError, "does not broadcast"),
        (torch.ones(2, 5, 8, dtype=torch.bool), ValueError, "does not broadcast"),
        ([[True] * 5] * 2, TypeError, "mask must be a torch.Tensor"),
        (np.ones((2, 5), dtype=bool), TypeError, "mask must be a torch.Tensor.*ndarray"),
        (torch.ones(2, 5, dtype=torch.bool).to_sparse(), ValueError, "dense"),
    ],
    ids=["float", "complex", "short-S", "extra-dim", "per-value", "list", "numpy", "sparse"],
)
def test_bad_masks_are_refused_by_name(mask, error, match):
    h = torch.randn(2, 5, 8)
    for backend in ("auto", "torch", "reference"):
        with pytest.raises(error, match=match):
            layer_stats(h, 3, mask=mask, backend=backend)
    with pytest.raises(error, match=match):
        reference_layer_stats(h, 3, mask=mask)
    with pytest.raises(error, match=match):
        layer_stats_many([h], 3, mask=mask)
