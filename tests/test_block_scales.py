"""block_scales.py: the block recipes' block scales against a plain numpy reference, the share
at the format's limit, the probe computing them for both GEMMs of each tensor, and the store
keeping them (schema 9) on SQLite and PostgreSQL."""

import json

import ml_dtypes
import numpy as np
import pytest

from fp8demo import block_scales, fp8
from fp8demo import model as model_lib
from fp8demo import probe as probe_lib
from fp8demo.config import TrainConfig
from fp8demo.database import Database
from fp8demo.fp8 import ROLES
from fp8demo.recipes import ROLE_GEMMS
from fp8demo.store import SCHEMA_VERSION, Store

E4M3_MAX = 448.0


# -- an independent reference: the scale rules written out in numpy --------------------------


def _reference_scales(matrix, recipe, role):
    """[R, C] divisors of each block of `matrix` (blocked axis last), NaN for an all-zero block,
    as the references define them (TE block128 / MXFP8, OCP MX floor, NVFP4)."""
    r, c = (128, 128) if recipe == "block128" and role == "kernel" else (1, 128)
    if recipe in ("mxfp8", "mxfp8-floor"):
        r, c = 1, 32
    elif recipe == "nvfp4":
        r, c = 1, 16
    rows, cols = -(-matrix.shape[0] // r), -(-matrix.shape[1] // c)
    amax = np.zeros((rows, cols))
    for i in range(rows):
        for j in range(cols):
            amax[i, j] = np.abs(matrix[i * r : (i + 1) * r, j * c : (j + 1) * c]).max()
    scales = np.full(amax.shape, np.nan)
    if recipe == "nvfp4":  # in float32, as the FP32 tensor scale is
        amax = amax.astype(np.float32)
        tensor = amax.max() / np.float32(E4M3_MAX * 6)
        block = np.minimum(amax / np.float32(6) / tensor, E4M3_MAX).astype(ml_dtypes.float8_e4m3fn)
        scales = block.astype(np.float32) * tensor
        return np.where(amax > 0, scales, np.nan), (r, c)
    for index, a in np.ndenumerate(amax):
        if a == 0:
            continue
        if recipe == "mxfp8-floor":  # OCP MX: 2^(floor(log2 amax) - emax), emax = 8 for E4M3
            e = int(np.floor(np.log2(a))) - 8
        else:  # the smallest power of two that keeps amax / 2^e within 448
            e = int(np.ceil(np.log2(a / E4M3_MAX)))
            e += int(a / 2.0**e > E4M3_MAX) - int(a / 2.0 ** (e - 1) <= E4M3_MAX)
        scales[index] = 2.0 ** min(max(e, -126), 127)
    return scales, (r, c)


def _reference_block_snr(matrix, scales, block, recipe):
    """Per-block SNR (dB) of matrix quantized with those block scales (E4M3 or E2M1 values)."""
    dtype = ml_dtypes.float4_e2m1fn if recipe == "nvfp4" else ml_dtypes.float8_e4m3fn
    fmax = 6.0 if recipe == "nvfp4" else E4M3_MAX
    r, c = block
    snr = np.full(scales.shape, np.inf)
    for (i, j), s in np.ndenumerate(scales):
        x = matrix[i * r : (i + 1) * r, j * c : (j + 1) * c].astype(np.float64)
        if np.isnan(s) or s == 0:
            snr[i, j] = np.inf if np.isnan(s) else 0.0  # a zero scale flushes the block
            continue
        scaled = x.astype(np.float32) / np.float32(s)
        q = np.clip(scaled, -fmax, fmax).astype(dtype).astype(np.float64) * s
        noise = np.sum((x - q) ** 2)
        snr[i, j] = np.inf if noise == 0 else 10 * np.log10(np.sum(x**2) / noise)
    return snr


def _spread_tokens(rows, cols, seed=0):
    """Values whose magnitude spreads over 2^-12 .. 2^12 by token (row) and by channel (column),
    so blocks along rows and along columns see different amaxes."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols))
    x *= 2.0 ** rng.integers(-12, 13, size=(rows, 1)) * 2.0 ** rng.integers(-4, 5, size=(1, cols))
    return x.astype(np.float32)


CASES = [  # (shape, role, gemm): the matrix as the GEMM sees it is x or x.T
    ((72, 160), "inputs", "fprop"),  # tokens x K: blocks along K
    ((72, 160), "inputs", "wgrad"),  # the same tensor blocked along the tokens M
    ((200, 300), "kernel", "fprop"),  # K x N: blocks along K (128 x 128 tiles for block128)
    ((200, 300), "kernel", "dgrad"),  # blocks along N
    ((72, 48), "outputs_grad", "dgrad"),
    ((72, 48), "outputs_grad", "wgrad"),
]


@pytest.mark.parametrize("recipe", block_scales.BLOCK_RECIPES)
def test_block_scales_and_statistics_match_a_numpy_reference(recipe):
    for shape, role, gemm in CASES:
        x = _spread_tokens(*shape)
        # The blocked axis last: inputs and gradients in their first GEMM as they are, the
        # kernel (K x N) in fprop as N x K; the other GEMM blocks the other axis.
        first = recipes_first(role) == gemm
        blocked = x if first != (role == "kernel") else x.T
        expected, block = _reference_scales(blocked, recipe, role)
        out = block_scales.block_scales(x, recipe, role, gemm)
        np.testing.assert_array_equal(out["scales"], expected.astype(np.float32), f"{role} {gemm}")

        used = ~np.isnan(expected) & (expected > 0)
        log2 = np.log2(expected[used])
        np.testing.assert_allclose(out["scale_log2_min"], log2.min(), atol=1e-5)
        np.testing.assert_allclose(out["scale_log2_max"], log2.max(), atol=1e-5)
        np.testing.assert_allclose(out["scale_log2_std"], log2.std(), rtol=1e-4, atol=1e-5)
        bins, counts = np.unique(np.floor(log2 + 1e-9).astype(int), return_counts=True)
        histogram = out["histogram"]
        got = {histogram["first"] + k: n for k, n in enumerate(histogram["counts"]) if n}
        assert got == dict(zip(bins.tolist(), counts.tolist()))

        snr = _reference_block_snr(blocked, expected, block, recipe)
        np.testing.assert_allclose(out["worst_block_snr_db"], snr.min(), atol=1e-3)
        (row, column, value), *_ = out["worst_blocks"]
        # Blocks tied for the worst differ only by rounding, which differs between backends.
        assert snr[row, column] <= snr.min() + 1e-3
        np.testing.assert_allclose(value, snr.min(), atol=1e-3)
        ranked = np.sort(snr[np.isfinite(snr)])[: block_scales.WORST_BLOCKS]
        np.testing.assert_allclose([b[2] for b in out["worst_blocks"]], ranked, atol=1e-3)


def recipes_first(role):
    return ROLE_GEMMS[role][0]


def test_the_gemm_decides_the_axis_the_blocks_run_along():
    # Rows (tokens) of very different sizes: along K each row's blocks get that row's scale,
    # along M (wgrad) every block mixes all rows and takes the largest one's.
    x = np.ones((64, 64), np.float32) * (2.0 ** np.arange(-16, 16, 0.5)[:, None])
    along_k = block_scales.block_scales(x, "mxfp8", "inputs", "fprop")
    along_m = block_scales.block_scales(x, "mxfp8", "inputs", "wgrad")
    assert along_k["scales"].shape == (64, 2) and along_m["scales"].shape == (64, 2)
    assert along_k["scale_log2_max"] - along_k["scale_log2_min"] > 25
    assert len(np.unique(along_k["scales"])) > 25
    assert len(np.unique(along_m["scales"])) == 2  # two groups of 32 tokens: two scales
    with pytest.raises(ValueError, match="feeds fprop and wgrad, not 'dgrad'"):
        block_scales.block_scales(x, "mxfp8", "inputs", "dgrad")
    with pytest.raises(ValueError, match="has no block scales"):
        block_scales.block_scales(x, "current", "inputs")
    with pytest.raises(ValueError, match="2D tensor"):
        block_scales.block_scales(x[None], "nvfp4", "inputs")


def test_limit_share_counts_blocks_whose_scale_hits_the_formats_limit():
    # MXFP8 / block128: 2 of 8 blocks so small (amax 2^-123) that the scale stops at 2^-126.
    x = np.ones((8, 128), np.float32)
    x[[2, 5]] = 2.0**-123
    for recipe, share in (("mxfp8", 2 * 4 / 32), ("mxfp8-floor", 8 / 32), ("block128", 2 / 8)):
        out = block_scales.block_scales(x, recipe, "inputs")
        assert out["limit_share"] == pytest.approx(share), recipe
        assert out["scale_log2_min"] == -126
    # NVFP4: blocks 2^-10 and 2^-13 below the largest keep normal E4M3 block scales; 2^-16
    # below gives a subnormal block scale and 2^-20 one that rounds to 0 (the block flushes).
    y = np.repeat(np.array([1.0, 2.0**-10, 2.0**-13, 2.0**-16, 2.0**-20], np.float32), 16)
    out = block_scales.block_scales(y[None], "nvfp4", "inputs")
    assert out["limit_share"] == pytest.approx(2 / 5)
    assert out["worst_blocks"][0][:2] == (0, 4) and out["worst_blocks"][0][2] == 0.0
    assert np.isnan(out["scales"]).sum() == 0 and out["scales"][0, 4] == 0
    # Finite nonzero values everywhere else: nothing at the limit; an all-zero tensor has no
    # used block, so no statistic.
    assert block_scales.block_scales(_spread_tokens(16, 64), "mxfp8", "inputs")["limit_share"] == 0
    empty = block_scales.block_scales(np.zeros((4, 64), np.float32), "mxfp8", "inputs")
    assert all(np.isnan(empty[name]) for name in block_scales.STATISTICS)
    assert empty["worst_blocks"] == [] and empty["histogram"] == {"first": None, "counts": []}


def test_non_finite_values_do_not_move_their_blocks_scales():
    x = _spread_tokens(4, 64)
    clean = block_scales.block_scales(x, "mxfp8", "inputs")
    x[1, 3], x[2, 40] = np.nan, np.inf
    dirty = block_scales.block_scales(x, "mxfp8", "inputs")
    np.testing.assert_array_equal(dirty["scales"], clean["scales"])


# -- the probe ------------------------------------------------------------------------------

SMALL = TrainConfig(vocab_size=300, seq_len=16, hidden_dim=8, intermediate_dim=40)


def test_the_probe_computes_block_scales_of_each_tensor_in_both_its_gemms():
    model = model_lib.compile(model_lib.build(SMALL, "fp8"), SMALL)
    rng = np.random.default_rng(0)
    x = rng.integers(2, SMALL.vocab_size, size=(16, SMALL.seq_len), dtype=np.int32)
    y = rng.integers(0, 2, size=16).astype(np.float32)
    # One block recipe: the probe's wiring is the same for each (every recipe's block scales
    # are checked against numpy above), and each adds most of a minute of compilation.
    probe = probe_lib.Probe(model, x, y, recipes=("delayed", "mxfp8"), blocks=True)
    assert probe.block_recipes == ("mxfp8",)
    probe.measure()
    layers = fp8.float8_layers(model)
    rows = probe.block_records(12)
    assert len(rows) == len(layers) * len(ROLES) * 2  # each tensor in both its GEMMs
    assert {r["step"] for r in rows} == {12}
    # A Dense layer's kernel (K, N), known without running the model: each GEMM's row holds
    # what block_scales computes on it directly.
    dense = next(i for i, layer in enumerate(layers) if not hasattr(layer, "equation"))
    # The layer reads its kernel in its compute dtype (Keras autocasts variables in a call).
    compute = layers[dense].dtype_policy.compute_dtype
    kernel = np.asarray(layers[dense]._kernel).astype(compute).astype(np.float32)
    for gemm in ("fprop", "dgrad"):
        for recipe in probe.block_recipes:
            expected = block_scales.block_scales(kernel, recipe, "kernel", gemm)
            (row,) = [
                r
                for r in rows
                if (r["layer"], r["role"], r["gemm"], r["recipe"])
                == (layers[dense].path, "kernel", gemm, recipe)
            ]
            for name in block_scales.STATISTICS:
                if expected[name] is None or not np.isfinite(expected[name]):
                    assert row[name] is None
                else:
                    np.testing.assert_allclose(row[name], expected[name], rtol=1e-5, atol=1e-5)
            details = json.loads(row["details"])
            assert details["histogram"] == expected["histogram"]
            assert [b[:2] for b in details["worst"]] == [
                list(b[:2]) for b in expected["worst_blocks"]
            ]
    # The two GEMMs block the kernel differently (along K, then along N).
    kernel_rows = {
        r["gemm"]: r
        for r in rows
        if (r["layer"], r["role"], r["recipe"]) == (layers[dense].path, "kernel", "mxfp8")
    }
    assert set(kernel_rows) == {"fprop", "dgrad"}
    assert kernel_rows["fprop"]["details"] != kernel_rows["dgrad"]["details"]
    # Switched off, or without block recipes: no rows.
    assert probe_lib.Probe(model, x, y, blocks=False).block_recipes == ()
    assert probe_lib.Probe(model, x, y, recipes=("current",)).block_records(0) == []


# -- the store -------------------------------------------------------------------------------


@pytest.fixture
def store(store_url, tmp_path) -> Store:
    """A new store on each backend: tests taking it run on SQLite and on PostgreSQL."""
    return Store(tmp_path / "home", url=store_url)


def _stored_rows(step, offset=0.0):
    """block_records of two layers with distinct numbers, one exact tensor (SNR +inf)."""
    stats = np.arange(2 * 3 * 2 * 5, dtype=np.float32).reshape(2, 3, 2, 5) + offset
    stats[1, 2, 0, 4] = np.inf
    worst = np.tile(np.array([[3, 1, 7.5]] * 5, np.float32), (2, 3, 2, 1, 1))
    histogram = np.zeros((2, 3, 2, 280), np.int32)
    histogram[..., 150:153] = [1, 0, 4]
    parts = (stats, worst, histogram)
    return block_scales.block_records(step, ["b", "a"], ("mxfp8", "nvfp4"), (parts, parts))


def test_the_store_keeps_block_rows_and_reads_the_latest_probe(store):
    _, (run_id,) = store.create_comparison(TrainConfig(precisions=("fp8",), probe_every=4))
    store.merge_summary(run_id, fp8_layers=[{"name": "b"}, {"name": "a"}])
    assert store.fp8_blocks(run_id) == []
    store.add_fp8_blocks(run_id, _stored_rows(4) + _stored_rows(8, offset=100))
    latest = store.fp8_blocks(run_id)
    assert len(latest) == 2 * 3 * 2 * 2 and {r["step"] for r in latest} == {8}
    # In the run's layer order ("b" first), then role, GEMM and recipe.
    assert [(r["layer"], r["role"], r["gemm"], r["recipe"]) for r in latest[:4]] == [
        ("b", "inputs", "fprop", "mxfp8"),
        ("b", "inputs", "fprop", "nvfp4"),
        ("b", "inputs", "wgrad", "mxfp8"),
        ("b", "inputs", "wgrad", "nvfp4"),
    ]
    assert latest[0]["scale_log2_min"] == 100.0 and latest[0]["limit_share"] == 103.0
    exact = next(
        r
        for r in latest
        if (r["layer"], r["role"], r["gemm"], r["recipe"])
        == ("a", "outputs_grad", "dgrad", "mxfp8")
    )
    assert exact["worst_block_snr_db"] is None
    assert latest[0]["details"] == {
        "histogram": {"first": 0, "counts": [1, 0, 4]},
        "worst": [[3, 1, 7.5]] * 5,
    }
    assert len(store.fp8_blocks(run_id, all_probes=True)) == 2 * len(latest)
    # Deleting the run deletes its block rows.
    store.end_run(run_id, "finished")
    store.delete_comparison(store.run(run_id)["comparison_id"])
    raw = Database(store.url).connection()
    assert raw.execute("SELECT COUNT(*) FROM fp8_blocks").fetchone()[0] == 0


def test_a_schema_8_store_migrates_to_9_with_the_block_table(store, tmp_path):
    raw = Database(store.url).connection()
    raw.execute("DROP TABLE fp8_blocks")
    raw.execute("UPDATE meta SET value='8' WHERE key='schema_version'")
    reopened = Store(tmp_path / "another home", url=store.url)
    assert "fp8_blocks" in raw.tables()
    assert raw.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION) == "9"
    _, (run_id,) = reopened.create_comparison(TrainConfig(precisions=("fp8",)))
    reopened.merge_summary(run_id, fp8_layers=[{"name": "b"}, {"name": "a"}])
    reopened.add_fp8_blocks(run_id, _stored_rows(0))
    assert len(reopened.fp8_blocks(run_id)) == 24
