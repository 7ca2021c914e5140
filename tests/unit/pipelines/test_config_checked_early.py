"""Settings that used to fail late or never are refused when read, naming the field (issue 29, class 11)."""

from __future__ import annotations

import pytest

from pipelines.config import ConfigError, ModelConfig, ResolutionConfig, load_yaml
from pipelines.core.resources import ResourceShortfall, await_placeable, pools_unplaceable
from pipelines.core.stage import PoolConfig


@pytest.mark.parametrize("sizes", [(0, 0), (64, 60), (128, 64), (4, 8)])
def test_class_sizes_are_positive_multiples_of_eight_in_order(sizes):
    with pytest.raises(ValueError, match="class_sizes"):
        ResolutionConfig(class_sizes=sizes)
    assert ResolutionConfig(class_sizes=(64, 128)).class_sizes == (64, 128)


@pytest.mark.parametrize("kw", [{"num_cpus": 0.00001}, {"num_gpus": 0.00001}, {"resources": {"tpu": 0.00001}}])
def test_pool_shares_ray_cannot_schedule_are_refused(kw):
    with pytest.raises(ValueError):
        PoolConfig(**kw)
    assert PoolConfig(num_cpus=0.25, num_gpus=0).num_cpus == 0.25


def test_a_yaml_alias_bomb_is_refused(tmp_path):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for k in range(1, 8):
        prev = chr(ord("a") + k - 1)
        lines.append(f"{chr(ord('a') + k)}: &{chr(ord('a') + k)} [" + ", ".join([f"*{prev}"] * 9) + "]")
    (tmp_path / "bomb.yaml").write_text("storage_options:\n  " + "\n  ".join(lines) + "\n")
    with pytest.raises(ConfigError, match="expands to more than"):
        load_yaml(tmp_path / "bomb.yaml")
    (tmp_path / "ok.yaml").write_text("base: &b {num_cpus: 1}\npools: {decode: *b, finish: *b}\n")
    assert load_yaml(tmp_path / "ok.yaml")["pools"]["finish"] == {"num_cpus": 1}


class _Stage:
    def __init__(self, name, **pool):
        self.name, self.pool = name, PoolConfig(**pool)


def test_a_pool_no_node_can_hold_is_named_at_once_on_a_local_ray():
    nodes = [{"CPU": 2.0, "memory": 1e9}]
    stages = [_Stage("decode", num_cpus=0.25), _Stage("model", num_cpus=1, num_gpus=1),
              _Stage("finish", num_cpus=0.25, resources={"ssd": 1})]
    problems = pools_unplaceable(stages, nodes)
    assert len(problems) == 2 and problems[0].startswith("pools.model: one worker needs")
    assert "GPU" in problems[0] and "pools.finish" in problems[1] and "ssd" in problems[1]
    with pytest.raises(ResourceShortfall, match="never grows"):
        await_placeable(stages, lambda: nodes, grows=False, deadline_s=600, echo=print)


def test_a_cluster_that_may_grow_is_waited_for_until_the_deadline():
    said, now = [], [0.0]
    stages = [_Stage("model", num_cpus=1, num_gpus=1)]
    with pytest.raises(ResourceShortfall, match="waited 30 s"):
        await_placeable(stages, lambda: [{"CPU": 8.0}], grows=True, deadline_s=30, echo=said.append, every_s=10,
                        clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert said and "waiting for nodes" in said[0]
    asked = []
    grown = iter([[{"CPU": 8.0}], [{"CPU": 8.0}, {"CPU": 8.0, "GPU": 1.0}]])
    await_placeable(stages, lambda: next(grown), grows=True, deadline_s=30, echo=said.append,
                    clock=lambda: 0.0, sleep=lambda s: None, request=asked.append)
    # the autoscaler is asked for such a node (it scales on demand, and no task asks yet), then the ask withdrawn
    assert asked == [[{"CPU": 1.0, "GPU": 1.0}], []]


def test_whether_ray_can_grow_is_read_from_who_started_it(monkeypatch):
    import types

    import ray._private.worker as worker

    from pipelines.core.resources import ray_can_grow

    monkeypatch.setattr(worker, "_global_node", None)
    assert ray_can_grow() is True  # no Ray started by this process: not known to be a fixed local one
    monkeypatch.setattr(worker, "_global_node", types.SimpleNamespace(head=True))
    assert ray_can_grow() is False  # this process started the head: a local instance, which never grows
    monkeypatch.setattr(worker, "_global_node", types.SimpleNamespace(head=False))
    assert ray_can_grow() is True  # joined a cluster


def test_a_cuda_device_a_worker_cannot_see_is_refused():
    m = ModelConfig(model="/ckpt", device="cuda:7")
    assert "sees only its own 1 GPU(s), as cuda:0" in m.device_problem(1.0)
    assert "no GPU" in ModelConfig(model="/ckpt", device="cuda").device_problem(0.0)
    assert ModelConfig(model="/ckpt", device="cuda:1").device_problem(2.0) is None
    assert ModelConfig(engine="baseline", device="cuda:7").device_problem(0.0) is None
