import pytest
import torch

from kdmsi_core.backbone import SPECS, build_backbone, load_pretrained


@pytest.mark.parametrize("name", list(SPECS))
def test_output_stride_and_channels(name):
    net = build_backbone(name).eval()
    with torch.inference_mode():
        out = net(torch.zeros(1, 3, 64, 96))
    assert out.shape[-2:] == (4, 6)
    assert out.shape[1] == net.out_channels
    assert net.output_stride == 16


def test_strides_change_output_stride():
    net = build_backbone("resnet18n", strides=(2, 2, 1, 1)).eval()
    with torch.inference_mode():
        assert net(torch.zeros(1, 3, 64, 64)).shape[-1] == 8
    assert net.output_stride == 8


def test_torchvision_parameter_names():
    names = set(build_backbone("resnet50").state_dict())
    for expected in ("conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight",
                     "layer4.2.conv3.weight", "layer4.2.bn3.num_batches_tracked"):
        assert expected in names
    basic = set(build_backbone("resnet18").state_dict())
    assert "layer2.0.downsample.1.weight" in basic and "layer1.1.conv2.weight" in basic


def test_load_pretrained_roundtrip_ignores_fc_and_adapts_bands():
    source = build_backbone("resnet18")
    state = dict(source.state_dict())
    state["fc.weight"] = torch.zeros(1000, 512)
    state["fc.bias"] = torch.zeros(1000)
    target = build_backbone("resnet18")
    loaded = load_pretrained(target, state)
    assert "fc.weight" not in loaded
    assert torch.equal(target.layer3[1].conv2.weight, source.layer3[1].conv2.weight)
    four = build_backbone("resnet18", in_channels=4)
    load_pretrained(four, dict(source.state_dict()))
    assert four.conv1.weight.shape[1] == 4


def test_load_pretrained_refuses_wrong_architecture():
    with pytest.raises(ValueError, match="do not fit"):
        load_pretrained(build_backbone("resnet18"), build_backbone("resnet34").state_dict())
