"""The trainers' resource plan and the wait for a growing cluster: pure functions, no Ray."""

from __future__ import annotations

import pytest

from pipelines.core.resources import ResourceShortfall, await_resources, fits, plan_train


def test_default_share_is_one_cpu_when_it_fits():
    plan = plan_train({"CPU": 8}, workers=2, cpus_per_worker=None, gpus_per_worker=0, data_cpus=0.25, fixed=True)
    assert plan.cpus_per_worker == 1.0 and plan.need == {"CPU": 2.25}


def test_default_share_shrinks_on_a_small_local_ray_leaving_the_data_stage_its_cpu():
    # The case: 2 trainers on a 2-CPU machine took both CPUs and the decode stage got none.
    plan = plan_train({"CPU": 2}, workers=2, cpus_per_worker=None, gpus_per_worker=0, data_cpus=0.25, fixed=True)
    assert plan.cpus_per_worker == 0.87 and plan.need["CPU"] <= 2
    assert "0.25 CPU for the data stage" in plan.describe()


def test_explicit_share_that_leaves_nothing_for_data_names_the_flags():
    with pytest.raises(ResourceShortfall, match=r"--cpus-per-worker.*--workers"):
        plan_train({"CPU": 2}, workers=2, cpus_per_worker=1.0, gpus_per_worker=0, data_cpus=0.25, fixed=True)


def test_too_many_trainers_for_the_cpus():
    with pytest.raises(ResourceShortfall, match="lower --workers"):
        plan_train({"CPU": 2}, workers=64, cpus_per_worker=None, gpus_per_worker=0, data_cpus=0.25, fixed=True)


def test_gpus_on_a_cpu_only_machine():
    with pytest.raises(ResourceShortfall, match=r"needs 2 GPU .*has 0.*--gpus-per-worker"):
        plan_train({"CPU": 16}, workers=2, cpus_per_worker=None, gpus_per_worker=1, data_cpus=0.25, fixed=True)


def test_a_growing_cluster_is_planned_as_asked():
    plan = plan_train({"CPU": 2}, workers=4, cpus_per_worker=None, gpus_per_worker=1, data_cpus=0.25, fixed=False)
    assert plan.cpus_per_worker == 1.0 and plan.need == {"CPU": 4.25, "GPU": 4}


def test_fits():
    assert fits({"CPU": 2.25}, {"CPU": 4, "GPU": 1}) and not fits({"CPU": 1, "GPU": 1}, {"CPU": 4})


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


def test_await_returns_when_the_cluster_grows_and_says_what_it_waits_for():
    clock, said = Clock(), []
    totals = lambda: {"CPU": 8, "GPU": 2} if clock.t >= 25 else {"CPU": 2}  # noqa: E731
    await_resources({"CPU": 4.25, "GPU": 2}, totals, deadline_s=60, echo=said.append, every_s=10, clock=clock,
                    sleep=clock.sleep)
    assert 25 <= clock.t < 27
    assert len(said) == 3 and all(s.startswith("waiting for resources: need 4.25 CPU, 2 GPU, cluster has 2 CPU, 0 GPU")
                                  for s in said)


def test_await_ends_at_its_deadline_with_the_message():
    clock = Clock()
    with pytest.raises(ResourceShortfall, match=r"waited 30 s.*need 1 CPU, 1 GPU.*--resource-wait-seconds"):
        await_resources({"CPU": 1, "GPU": 1}, lambda: {"CPU": 2}, deadline_s=30, echo=lambda *_: None, clock=clock,
                        sleep=clock.sleep)
