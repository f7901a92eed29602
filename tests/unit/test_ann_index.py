import json

import numpy as np
import pytest

from eightbox.retrieval.ann_index import FLAT_MAX, IVF_FLAT_MAX, AnnIndex, EncoderVersionMismatch, choose_index
from eightbox.retrieval.bench_ann import clustered, embedding_space
from eightbox.training.two_tower import Embeddings

DIM = 16


@pytest.fixture(scope="module")
def catalog():
    rng = np.random.default_rng(0)
    space = embedding_space(rng, latent=8, dim=DIM, clusters=50)
    vectors = clustered(6000, space, rng)
    return [f"i{i:05d}" for i in range(len(vectors))], vectors, clustered(200, space, rng)


@pytest.fixture(scope="module")
def ivf(catalog):
    ids, vectors, queries = catalog
    return AnnIndex.build(ids, vectors, "enc-a", kind="ivf_flat", queries=queries)


def test_index_type_follows_catalog_size():
    assert choose_index(FLAT_MAX - 1, 64).kind == "flat"
    assert choose_index(FLAT_MAX, 64).kind == "ivf_flat"
    assert choose_index(IVF_FLAT_MAX, 64).kind == "ivf_flat"
    assert choose_index(IVF_FLAT_MAX + 1, 64).kind == "hnsw"
    assert choose_index(IVF_FLAT_MAX + 1, 64, gpu=True).kind == "ivf_flat"  # FAISS has no GPU HNSW
    assert choose_index(1_000_000, 64).params == {"M": 32, "efConstruction": 80}


def test_ivf_lists_grow_with_the_catalog_and_keep_enough_training_points():
    assert choose_index(100_000, 64).params["nlist"] == 1024
    assert choose_index(200_000, 64, kind="ivf_pq").params["nlist"] == 2048
    assert choose_index(1000, 64, kind="ivf_flat").params["nlist"] * 39 <= 1000
    with pytest.raises(ValueError, match="unknown index kind"):
        choose_index(10, 4, kind="lsh")


def test_build_measures_recall_at_10_and_100_and_stores_it_with_the_parameters(ivf, catalog):
    meta = ivf.metadata
    assert meta["index_type"] == "ivf_flat" and meta["n_items"] == 6000 and meta["dim"] == DIM
    assert set(meta["params"]) == {"nlist", "nprobe"} and meta["params"]["nprobe"] <= meta["params"]["nlist"]
    assert meta["recall"]["100"] >= meta["target_recall"] == 0.95
    assert 0.9 <= meta["recall"]["10"] <= 1.0
    assert meta["encoder_version"] == "enc-a" and meta["gpu"] is False and meta["built_at"].endswith("+00:00")
    assert meta["recall_queries"] == len(catalog[2])


def test_a_small_catalog_gets_exact_search_with_perfect_recall(catalog):
    ids, vectors, _ = catalog
    flat = AnnIndex.build(ids[:500], vectors[:500], "enc-a")
    assert flat.metadata["index_type"] == "flat" and flat.metadata["recall"] == {"10": 1.0, "100": 1.0}


def test_search_returns_item_ids_best_first(ivf, catalog):
    ids, vectors, _ = catalog
    found, scores = ivf.search(vectors[[7, 42]], 5, encoder_version="enc-a")
    assert [row[0] for row in found] == [ids[7], ids[42]]  # a unit vector is its own nearest neighbour
    assert all(isinstance(i, str) for row in found for i in row)
    assert scores.shape == (2, 5) and np.all(np.diff(scores, axis=1) <= 1e-6)


def test_k_beyond_the_catalog_returns_every_item_once(catalog):
    ids, vectors, _ = catalog
    small = AnnIndex.build(ids[:30], vectors[:30], "enc-a")
    found, _ = small.search(vectors[0], 100, encoder_version="enc-a")
    assert sorted(found[0]) == sorted(ids[:30])


def test_search_refuses_queries_from_another_encoder(ivf, catalog):
    with pytest.raises(EncoderVersionMismatch, match="'enc-a'.*'enc-b'"):
        ivf.search(catalog[2][:1], 10, encoder_version="enc-b")
    with pytest.raises(EncoderVersionMismatch):
        ivf.search(Embeddings(catalog[2][:1], "enc-b"), 10)  # the two-tower's tagged output


def test_tagged_queries_need_no_explicit_version_and_untagged_ones_do(ivf, catalog):
    tagged = Embeddings(catalog[2], "enc-a")
    assert ivf.search(tagged[:3], 10)[0] == ivf.search(catalog[2][:3], 10, encoder_version="enc-a")[0]
    with pytest.raises(ValueError, match="no encoder version"):
        ivf.search(catalog[2][:1], 10)


def test_load_refuses_an_index_built_for_another_encoder_naming_both(ivf, tmp_path):
    ivf.save(tmp_path)
    with pytest.raises(EncoderVersionMismatch) as err:
        AnnIndex.load(tmp_path, expected_encoder_version="enc-b")
    assert "enc-a" in str(err.value) and "enc-b" in str(err.value)
    assert (err.value.index_version, err.value.query_version) == ("enc-a", "enc-b")


@pytest.mark.parametrize("kind", ["ivf_flat", "hnsw", "ivf_pq"])
def test_save_and_load_give_identical_results(catalog, tmp_path, kind):
    ids, vectors, queries = catalog
    index = AnnIndex.build(ids, vectors, "enc-a", kind=kind, params={"pq_m": 4} if kind == "ivf_pq" else None)
    index.save(tmp_path)
    assert json.loads((tmp_path / "index.json").read_text())["params"] == index.metadata["params"]
    back = AnnIndex.load(tmp_path, expected_encoder_version="enc-a")
    before, after = index.search(queries, 20, encoder_version="enc-a"), back.search(queries, 20, encoder_version="enc-a")
    assert before[0] == after[0]
    np.testing.assert_array_equal(before[1], after[1])
    assert back.metadata == index.metadata


def test_build_rejects_mismatched_or_repeated_ids(catalog):
    ids, vectors, _ = catalog
    with pytest.raises(ValueError, match="one vector per id"):
        AnnIndex.build(ids[:10], vectors[:11], "enc-a")
    with pytest.raises(ValueError, match="repeat"):
        AnnIndex.build(["a", "a"], vectors[:2], "enc-a")


def test_the_benchmark_reports_recall_and_speed_against_exact_search():
    from eightbox.retrieval.bench_ann import measure

    result = measure(25_000, n_queries=100, n_single=10)
    assert result["index"] == "ivf_flat" and result["recall_at_100"] >= 0.9
    assert result["speedup_single"] == pytest.approx(result["qps_single"] / result["exact_qps_single"], abs=0.11)
