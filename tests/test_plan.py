from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipelines.plan import metadata_digests, plan_index
from pipelines.resources import (
    NodeShape,
    ResourceRequest,
    StageCosts,
    plan_resources,
    rows_per_block,
)

MODEL = "tiny@untrained-seed0/x"


def manifest(rows: dict[str, str | None]) -> pa.Table:
    return pa.table(
        {
            "video_id": list(rows),
            "uri": [f"/v/{v}.mp4" for v in rows],
            "fingerprint": pa.array(list(rows.values()), pa.string()),
        }
    )


def indexed(rows: dict[str, tuple[str, str]]) -> pa.Table:
    """Table state of videos indexed from :func:`manifest` rows (same uri, so same digest)."""
    return pa.table(
        {
            "video_id": list(rows),
            "fingerprint": [fp for fp, _ in rows.values()],
            "model_id": [model for _, model in rows.values()],
            "metadata_digest": metadata_digests(manifest({v: fp for v, (fp, _) in rows.items()})),
        }
    )


def test_every_category_is_found() -> None:
    plan = plan_index(
        manifest(
            {"new": "1", "same": "1", "bytes": "2", "model": "1", "missing": None,
             "failed": "1", "fixed": "2"}
        ),
        indexed=indexed(
            {"same": ("1", MODEL), "bytes": ("1", MODEL), "model": ("1", "other"),
             "gone": ("1", MODEL)}
        ),
        failed=pa.table({"video_id": ["failed", "fixed", "gone-err"],
                         "fingerprint": ["1", "1", "1"]}),
        model_id=MODEL,
    )  # fmt: skip
    reasons = dict(
        zip(plan.todo["video_id"].to_pylist(), plan.todo["reason"].to_pylist(), strict=True)
    )
    assert reasons == {"bytes": "changed", "fixed": "retry", "model": "model_changed", "new": "new"}
    assert plan.missing["video_id"].to_pylist() == ["missing"]
    assert plan.delete_ids == ["gone", "gone-err"]
    assert plan.counts["unchanged"] == 1 and plan.counts["failed_before"] == 1


def test_descriptive_changes_update_in_place_and_encoding_changes_win() -> None:
    rows = manifest({"same": "1", "caption": "1", "uri": "1", "split": "1", "extra": "1",
                     "bytes": "2", "model": "1"})  # fmt: skip
    described = rows.append_column("caption", pa.array([["a cat"]] * 7)).append_column(
        "split", pa.array(["train"] * 7)
    )
    table = indexed({v: ("1", MODEL) for v in rows["video_id"].to_pylist()})
    table = table.set_column(3, "metadata_digest", metadata_digests(described))
    table = table.set_column(2, "model_id", pa.array([MODEL] * 6 + ["other"]))

    edited = pa.table(
        {
            "video_id": described["video_id"],
            "uri": [u + ("?moved" if v == "uri" else "") for v, u in
                    zip(rows["video_id"].to_pylist(), rows["uri"].to_pylist(), strict=True)],
            "fingerprint": described["fingerprint"],
            "caption": [["a dog"] if v in ("caption", "bytes", "model") else ["a cat"]
                        for v in rows["video_id"].to_pylist()],
            "split": ["test" if v == "split" else "train" for v in rows["video_id"].to_pylist()],
            "tag": ["new" if v == "extra" else None for v in rows["video_id"].to_pylist()],
        }
    )  # fmt: skip
    # The "tag" column is new: every row's descriptive columns changed.
    assert plan_index(edited, indexed=table, failed=None, model_id=MODEL).counts == {
        "metadata_changed": 5, "changed": 1, "model_changed": 1
    }  # fmt: skip

    plan = plan_index(edited.drop_columns(["tag"]), indexed=table, failed=None, model_id=MODEL)
    assert plan.counts == {
        "unchanged": 2, "metadata_changed": 3, "changed": 1, "model_changed": 1
    }  # fmt: skip
    assert sorted(plan.metadata_updates["video_id"].to_pylist()) == ["caption", "split", "uri"]
    assert plan.metadata_updates["metadata_digest"].null_count == 0
    assert sorted(plan.todo["video_id"].to_pylist()) == ["bytes", "model"]
    # A table written before digests existed: rows are described anew, none encoded for that.
    old = table.drop_columns(["metadata_digest"])
    assert plan_index(described, indexed=old, failed=None, model_id=MODEL).counts == {
        "metadata_changed": 5, "changed": 1, "model_changed": 1
    }  # fmt: skip


def test_metadata_digest_sees_every_descriptive_column_but_not_the_encoding_ones() -> None:
    base = pa.table(
        {
            "video_id": ["a", "b"],
            "uri": ["/v/a.mp4", "/v/b.mp4"],
            "caption": pa.array([["x", "y"], None], pa.list_(pa.string())),
            "fingerprint": ["1", "2"],
            "start_s": [0.0, 1.0],
            "end_s": [1.0, 2.0],
            "shape": pa.array([{"w": 1}, {"w": 2}]),  # not castable to text: JSON
        }
    )
    digests = metadata_digests(base).to_pylist()
    assert len(set(digests)) == 2 and digests == metadata_digests(base).to_pylist()

    def changed(column: str, values: list) -> list[bool]:
        index = base.schema.get_field_index(column)
        edited = base.set_column(index, column, pa.array(values, base.schema.field(column).type))
        after = metadata_digests(edited).to_pylist()
        return [x != y for x, y in zip(digests, after, strict=True)]

    assert changed("caption", [["x y"], None]) == [True, False]  # list joins stay distinct
    assert changed("caption", [["x", "y"], []]) == [False, True]  # null is not empty
    assert changed("uri", ["/v/a.mp4", "/w/b.mp4"]) == [False, True]
    assert changed("shape", [{"w": 1}, {"w": 3}]) == [False, True]
    for encoding in ("fingerprint", "start_s", "end_s"):
        assert changed(encoding, base[encoding].to_pylist()[::-1]) == [False, False], encoding


def test_empty_tables_mean_everything_is_new_and_rebuild_forces_all() -> None:
    rows = manifest({"a": "1", "b": "1"})
    assert plan_index(rows, indexed=None, failed=None, model_id=MODEL).counts == {"new": 2}
    table = indexed({"a": ("1", MODEL), "b": ("1", MODEL)})
    assert plan_index(rows, indexed=table, failed=None, model_id=MODEL).todo.num_rows == 0
    rebuilt = plan_index(rows, indexed=table, failed=None, model_id=MODEL, rebuild=True)
    assert rebuilt.counts == {"rebuild": 2}


def test_flags_keep_deleted_and_retry_errors() -> None:
    failed = pa.table({"video_id": ["a"], "fingerprint": ["1"]})
    plan = plan_index(
        manifest({"a": "1"}),
        indexed=indexed({"gone": ("1", MODEL)}),
        failed=failed,
        model_id=MODEL,
        keep_deleted=True,
        retry_errors=True,
    )
    assert plan.delete_ids == [] and plan.counts == {"retry": 1}


@pytest.mark.parametrize("keep_deleted", [False, True])
def test_a_plan_joined_in_partitions_is_the_plan_joined_at_once(keep_deleted: bool) -> None:
    """Every category, duplicate ids in both tables among them, over many partitions."""
    rng = np.random.default_rng(11)
    ids = [f"v{i:04d}" for i in range(600)]
    listed = ids[:500]  # the last 100 only in the tables: deleted unless kept
    fingerprints = rng.choice(["1", "2", None], size=len(listed), p=[0.6, 0.3, 0.1])
    rows = manifest(dict(zip(listed, fingerprints, strict=True)))
    in_table = ids[100:]
    table = indexed(
        {v: (str(rng.choice(["1", "2"])), str(rng.choice([MODEL, "other"]))) for v in in_table}
    )
    table = table.append_column("indexed_at", pa.array(rng.integers(0, 10, table.num_rows)))
    twice = table.slice(0, 50)  # what two writers at once left: the later copies win
    twice = twice.set_column(4, "indexed_at", pa.array(np.full(50, 99)))
    twice = twice.set_column(1, "fingerprint", pa.array(["2"] * 50))
    table = pa.concat_tables([table, twice])
    failed_ids = list(rng.choice(ids, size=120, replace=False))
    failed = pa.table(
        {
            "video_id": failed_ids + failed_ids[:10],
            "fingerprint": pa.array(rng.choice(["1", "2", None], size=130).tolist(), pa.string()),
            "at": pa.array(rng.integers(0, 10, 130)),
        }
    )

    def plan(**partitioning: int) -> object:
        return plan_index(
            rows, indexed=table, failed=failed, model_id=MODEL, keep_deleted=keep_deleted,
            retry_errors=False, **partitioning,
        )  # fmt: skip

    at_once, partitioned = plan(), plan(partition_rows=7)
    assert len(at_once.counts) >= 6, at_once.counts  # the scenario holds most categories
    assert partitioned.counts == at_once.counts
    for part in ("todo", "missing", "missing_recorded", "metadata_updates"):
        assert getattr(partitioned, part).equals(getattr(at_once, part)), part
    assert partitioned.delete_ids == at_once.delete_ids


def test_cpu_plan_leaves_headroom_and_gpu_plan_pins_one_actor_per_gpu() -> None:
    cpu = plan_resources(ResourceRequest(), cluster_cpus=2, cluster_gpus=0)
    assert not cpu.use_gpus
    reserved = cpu.decode_workers * cpu.decode_cpus + cpu.encode_actors * cpu.encode_cpus
    assert reserved <= 2 - 1 + 1e-9
    # Reservations leave headroom; torch computes on every CPU the decoders do not reserve, one
    # single-thread actor per CPU.
    assert cpu.encode_actors == 2 and cpu.torch_threads == 1
    # ... and each of them decodes its own videos: no decode pool.
    assert cpu.decode_in_encode_actors and cpu.decode_workers == 0
    assert cpu.decode_batch_size == cpu.encode_batch_size == rows_per_block(cpu, 32)
    pooled = plan_resources(ResourceRequest(decode_workers=1), cluster_cpus=2, cluster_gpus=0)
    assert not pooled.decode_in_encode_actors and pooled.decode_workers == 1
    big = plan_resources(ResourceRequest(), cluster_cpus=64, cluster_gpus=0)
    assert big.encode_actors == 8 and big.torch_threads > 1  # replicas capped, threads instead
    assert not big.decode_in_encode_actors and big.decode_workers > 0
    asked = plan_resources(ResourceRequest(encode_actors=1), cluster_cpus=2, cluster_gpus=0)
    assert asked.encode_actors == 1 and asked.torch_threads == 2
    assert not asked.decode_in_encode_actors  # its second thread would idle while it decodes
    # A few videos start only as many actors as they make blocks, with the CPUs among them.
    few = plan_resources(ResourceRequest(), cluster_cpus=4, cluster_gpus=0, videos=5)
    assert few.encode_actors == 1 and few.torch_threads == 3 and few.decode_workers == 1
    many = plan_resources(ResourceRequest(), cluster_cpus=4, cluster_gpus=0, videos=1000)
    assert many == plan_resources(ResourceRequest(), cluster_cpus=4, cluster_gpus=0)
    named = ResourceRequest(encode_actors=3)
    assert plan_resources(named, cluster_cpus=4, cluster_gpus=0, videos=5).encode_actors == 3
    for videos in (1, 16, 100, 192):
        fitted = plan_resources(ResourceRequest(), cluster_cpus=4, cluster_gpus=0, videos=videos)
        blocks = -(-videos // rows_per_block(fitted, videos))
        assert fitted.encode_actors <= blocks and fitted.decode_workers <= blocks
    gpu = plan_resources(ResourceRequest(), cluster_cpus=16, cluster_gpus=4)
    assert gpu.use_gpus and gpu.encode_actors == 4 and gpu.encode_gpus == 1
    assert gpu.encode_actors * gpu.encode_cpus + gpu.decode_workers * gpu.decode_cpus <= 16 * 0.9
    forced_cpu = plan_resources(ResourceRequest(gpus_per_actor=0), cluster_cpus=8, cluster_gpus=2)
    assert not forced_cpu.use_gpus
    assert not gpu.decode_in_encode_actors and gpu.decode_workers > 0


@pytest.mark.parametrize(
    ("request_", "gpus", "message"),
    [
        (ResourceRequest(encode_actors=3, gpus_per_actor=1), 2, "exceeds the cluster's 2 GPUs"),
        (ResourceRequest(gpus_per_actor=1), 0, "has no GPUs"),
        (ResourceRequest(encode_actors=8), 0, "does not fit"),
        (ResourceRequest(encode_actors=8, decode_workers=1), 0, "do not fit"),
    ],
)
def test_impossible_requests_are_refused(
    request_: ResourceRequest, gpus: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        plan_resources(request_, cluster_cpus=2, cluster_gpus=gpus)


def test_gpu_plan_places_decoders_on_cpu_nodes_first_and_sizes_them_from_costs() -> None:
    nodes = [NodeShape("gpu-a", cpus=8, gpus=2), NodeShape("cpu-b", cpus=16),
             NodeShape("cpu-a", cpus=32)]  # fmt: skip
    # Default costs (real footage on a GPU): every CPU the cluster has left decodes.
    plan = plan_resources(ResourceRequest(), cluster_cpus=56, cluster_gpus=2, nodes=nodes)
    assert plan.encode_actors == 2 and plan.encode_cpus == 1
    assert plan.decode_workers == 48 and plan.decode_cpus == 1  # 56 x 0.9 budget, less 2
    # The biggest CPU-only node first, then the other, then the GPU node's 6 spare CPUs.
    assert plan.decode_nodes == ("cpu-a",) * 32 + ("cpu-b",) * 16
    assert plan.decode_on_cpu_nodes == 48
    assert "(48 on CPU-only nodes, 0 beside the GPUs)" in plan.describe()
    # Cheap decoding (5 ms per video) against a 1 ms encode: 5 CPUs per GPU, with margin.
    cheap = StageCosts(decode_cpu_s_per_video=0.005, encode_s_per_video=0.001)
    sized = plan_resources(
        ResourceRequest(), cluster_cpus=56, cluster_gpus=2, nodes=nodes, costs=cheap
    )
    assert sized.decode_workers == 13 and sized.decode_nodes == ("cpu-a",) * 13
    # No CPU-only node: the GPU node's CPUs beside its encode actors decode.
    alone = plan_resources(ResourceRequest(), cluster_cpus=8, cluster_gpus=2, nodes=nodes[:1])
    assert alone.decode_nodes == ("gpu-a",) * alone.decode_workers
    assert alone.decode_on_cpu_nodes == 0 and "beside the GPUs" in alone.describe()
    # Without node shapes (or on CPUs only) Ray places the actors.
    assert plan_resources(ResourceRequest(), cluster_cpus=56, cluster_gpus=2).decode_nodes == ()
    cpu = plan_resources(ResourceRequest(gpus_per_actor=0), cluster_cpus=56, cluster_gpus=2,
                         nodes=nodes)  # fmt: skip
    assert cpu.decode_nodes == () and cpu.decode_actor_options() is None


def test_decode_actor_options_name_the_planned_nodes_in_turn() -> None:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    gpu, cpu = "ab" * 28, "cd" * 28  # Ray node ids: 28 bytes in hex
    nodes = [NodeShape(gpu, cpus=3, gpus=1), NodeShape(cpu, cpus=1)]
    plan = plan_resources(ResourceRequest(), cluster_cpus=4, cluster_gpus=1, nodes=nodes)
    # 2 CPUs decode: the CPU node holds one decoder, the GPU node's CPUs beside its encoder one.
    assert plan.decode_nodes == (cpu, gpu) and plan.decode_on_cpu_nodes == 1
    options = plan.decode_actor_options()
    assert options is not None
    chosen = [options()["scheduling_strategy"] for _ in range(3)]
    assert all(isinstance(s, NodeAffinitySchedulingStrategy) and s.soft for s in chosen)
    assert [s.node_id for s in chosen] == [cpu, gpu, cpu]


def test_gpu_decoding_decodes_inside_the_gpu_actors() -> None:
    nodes = [NodeShape("ab" * 28, cpus=8, gpus=2), NodeShape("cd" * 28, cpus=16)]
    plan = plan_resources(
        ResourceRequest(), cluster_cpus=24, cluster_gpus=2, nodes=nodes, gpu_decoding=True
    )
    assert plan.use_gpus and plan.encode_actors == 2 and plan.decode_in_encode_actors
    assert plan.decode_workers == 0 and plan.decode_nodes == ()
    assert plan.decode_batch_size == plan.encode_batch_size
    assert "each decoding its own videos" in plan.describe()
    # A named decode pool is kept (CPU decoding beside GPU actors that would decode with NVDEC
    # is the user's call), and without GPUs the flag changes nothing.
    named = ResourceRequest(decode_workers=4)
    pooled = plan_resources(named, cluster_cpus=24, cluster_gpus=2, gpu_decoding=True)
    assert not pooled.decode_in_encode_actors and pooled.decode_workers == 4
    cpu = plan_resources(ResourceRequest(), cluster_cpus=24, cluster_gpus=0, gpu_decoding=True)
    assert cpu == plan_resources(ResourceRequest(), cluster_cpus=24, cluster_gpus=0)
