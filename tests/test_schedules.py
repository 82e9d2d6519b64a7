"""Learning-rate schedules against torch.optim.lr_scheduler, 100 epochs, exactly."""

import math

import numpy as np
import pytest

import jitprop as jp

torch = pytest.importorskip("torch")


def _opt(cls=jp.SGD, lr=0.1):
    model = jp.Sequential([jp.Dense(2, 1, dtype=np.float64, seed=0)])
    return cls(model, lr=lr)


def _torch_opt(lr=0.1):
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)


def _metrics(n=100):
    # a noisy decrease with plateaus, so that the plateau schedule reduces several times
    rng = np.random.default_rng(0)
    return [float(1.0 / (1 + k // 15) + 0.01 * rng.standard_normal()) for k in range(n)]


CASES = [
    ("StepLR", dict(step_size=7, gamma=0.5)),
    ("StepLR", dict(step_size=1, gamma=0.9)),
    ("CosineAnnealingLR", dict(T_max=30)),
    ("CosineAnnealingLR", dict(T_max=100, eta_min=1e-3)),
    ("CosineAnnealingLR", dict(T_max=7, eta_min=0.01)),
    ("LinearLR", dict()),
    ("LinearLR", dict(start_factor=0.25, end_factor=0.9, total_iters=20)),
    ("LinearLR", dict(start_factor=1.0, end_factor=0.0, total_iters=100)),
    ("ReduceLROnPlateau", dict(patience=3)),
    ("ReduceLROnPlateau", dict(mode="max", factor=0.5, patience=2, cooldown=3, min_lr=0.004)),
    ("ReduceLROnPlateau", dict(factor=0.3, patience=0, threshold=0.05, threshold_mode="abs", cooldown=1)),
]


def _sequence(sched, opt, get_lr, metrics):
    out = [get_lr()]
    for k in range(100):
        if isinstance(sched, (jp.ReduceLROnPlateau, torch.optim.lr_scheduler.ReduceLROnPlateau)):
            sched.step(metrics[k] if sched.mode == "min" else -metrics[k])
        else:
            sched.step()
        out.append(get_lr())
    return out


@pytest.mark.parametrize("name,kwargs", CASES)
@pytest.mark.parametrize("opt_cls", [jp.SGD, jp.Adam])
def test_lr_sequence_equals_torch(name, kwargs, opt_cls):
    metrics = _metrics()
    opt = _opt(opt_cls)
    sched = getattr(jp, name)(opt, **kwargs)
    ours = _sequence(sched, opt, lambda: opt.lr, metrics)
    topt = _torch_opt()
    tsched = getattr(torch.optim.lr_scheduler, name)(topt, **kwargs)
    topt.step()
    theirs = _sequence(tsched, topt, lambda: topt.param_groups[0]["lr"], metrics)
    assert ours == theirs  # exactly, every epoch
    assert len(set(ours)) > 3  # the schedule did change the learning rate
    assert sched.get_last_lr() == tsched.get_last_lr()[0]


@pytest.mark.parametrize("name,kwargs", CASES)
def test_state_dict_resumes_the_sequence(name, kwargs):
    metrics = _metrics()
    opt = _opt()
    sched = getattr(jp, name)(opt, **kwargs)
    full = _sequence(sched, opt, lambda: opt.lr, metrics)

    opt = _opt()
    sched = getattr(jp, name)(opt, **kwargs)
    first = [opt.lr]
    for k in range(40):
        sched.step(*([metrics[k] if sched.mode == "min" else -metrics[k]] if name == "ReduceLROnPlateau" else []))
        first.append(opt.lr)
    state = sched.state_dict()
    import json
    state = json.loads(json.dumps(state))  # what a checkpoint stores
    opt2 = _opt()
    sched2 = getattr(jp, name)(opt2, **kwargs)
    sched2.load_state_dict(state)
    rest = []
    for k in range(40, 100):
        sched2.step(*([metrics[k] if sched2.mode == "min" else -metrics[k]] if name == "ReduceLROnPlateau" else []))
        rest.append(opt2.lr)
    assert first + rest == full


@pytest.mark.parametrize("make,name", [
    (lambda o: jp.StepLR(o, 0), "step_size"), (lambda o: jp.StepLR(o, 2, gamma=-1), "gamma"),
    (lambda o: jp.CosineAnnealingLR(o, 0), "T_max"), (lambda o: jp.CosineAnnealingLR(o, 5, eta_min=-1), "eta_min"),
    (lambda o: jp.LinearLR(o, start_factor=0), "start_factor"), (lambda o: jp.LinearLR(o, end_factor=2), "end_factor"),
    (lambda o: jp.LinearLR(o, total_iters=0), "total_iters"), (lambda o: jp.ReduceLROnPlateau(o, mode="up"), "mode"),
    (lambda o: jp.ReduceLROnPlateau(o, factor=1.0), "factor"),
    (lambda o: jp.ReduceLROnPlateau(o, patience=-1), "patience"),
    (lambda o: jp.ReduceLROnPlateau(o, threshold_mode="x"), "threshold_mode"),
    (lambda o: jp.StepLR(object(), 2), "optimizer")])
def test_bad_arguments_fail_at_construction(make, name):
    with pytest.raises((ValueError, TypeError), match=name):
        make(_opt())


def test_cosine_reaches_eta_min():
    opt = _opt(lr=0.5)
    s = jp.CosineAnnealingLR(opt, T_max=10, eta_min=0.05)
    for _ in range(10):
        s.step()
    assert math.isclose(opt.lr, 0.05, rel_tol=1e-12)
