"""The client's second-wave methods against the real endpoints (a live server)."""

import torch

STEP = {"scheduler": {"type": "StepLR", "step_size": 3, "gamma": 0.5}, "steps": 10}


def test_compare_and_resume_through_the_client(lrs):
    other = {**STEP, "scheduler": {**STEP["scheduler"], "step_size": 4}}
    answer = lrs.compare([STEP, other], labels=["3", "4"], tolerance=1e-9)
    assert [s["label"] for s in answer["series"]] == ["3", "4"]
    assert answer["pairs"][0]["first_difference"] == 3

    resumed = lrs.resume(STEP, 5, recipes=["state_dict", "last_epoch"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    real = [opt.param_groups[0]["lr"]]
    for _ in range(9):
        opt.step()
        sched.step()
        real.append(opt.param_groups[0]["lr"])
    assert resumed["uninterrupted"][0] == real
    assert resumed["recipes"]["state_dict"]["verdict"] == "identical"
