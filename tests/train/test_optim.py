import pytest
import torch

from kdmsi_core.model import NetworkConfig, SiameseCAM
from kdmsi_train.optim import make_optimizer, parameter_groups, poly_lr


def test_groups_and_real_momentum():
    nets = [SiameseCAM(NetworkConfig()), SiameseCAM(NetworkConfig(combination="abs"))]
    groups = parameter_groups(nets, pretrained=True)
    assert set(groups) == {"pretrained_weight", "pretrained_bias", "new_weight"}
    assert len(groups["new_weight"]) == 2  # the two CAM heads
    opt = make_optimizer(nets, "sgd", 1e-3, 1e-4, pretrained=True)
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs == pytest.approx([1e-3, 2e-3, 1e-2])
    for g in opt.param_groups:
        assert g["momentum"] == 0.9 and g["weight_decay"] == 1e-4 and g["nesterov"]
    scratch = parameter_groups(nets, pretrained=False)
    assert set(scratch) == {"new_weight", "new_bias"}


def test_poly_schedule():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [p], "lr": 0.1, "initial_lr": 0.1}], lr=0.1)
    poly_lr(opt, 50, 100)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 0.9)
    poly_lr(opt, 100, 100)
    assert opt.param_groups[0]["lr"] == 0
