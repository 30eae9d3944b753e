import pytest
import torch

from kdmsi_core.model import (
    NetworkConfig,
    SiameseCAM,
    for_inference,
    fuse,
    image_logits,
    teacher_cam,
)


def test_fusions():
    f1, f2 = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    assert torch.equal(fuse(f1, f2, "cat"), torch.cat([f2, f1], 1))
    assert torch.equal(fuse(f1, f2, "minus"), f2 - f1)
    assert torch.equal(fuse(f1, f2, "abs"), (f2 - f1).abs())


@pytest.mark.parametrize("combination", ["cat", "minus", "abs"])
def test_cam_shape_and_head(combination):
    net = SiameseCAM(NetworkConfig("resnet18n", combination)).eval()
    assert net.classifier.bias is None and net.classifier.out_channels == 1
    expected_in = net.backbone.out_channels * (2 if combination == "cat" else 1)
    assert net.classifier.in_channels == expected_in
    with torch.inference_mode():
        cam = net(torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64))
    assert cam.shape == (2, 1, 4, 4)


def test_abs_is_symmetric_and_minus_antisymmetric():
    torch.manual_seed(0)
    a, b = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        net_abs = SiameseCAM(NetworkConfig(combination="abs")).eval()
        assert torch.allclose(net_abs(a, b), net_abs(b, a), atol=1e-5)
        net_minus = SiameseCAM(NetworkConfig(combination="minus")).eval()
        assert torch.allclose(net_minus(a, b), -net_minus(b, a), atol=1e-5)


def test_image_logits_is_gap():
    cam = torch.arange(8.0).view(2, 1, 2, 2)
    assert torch.equal(image_logits(cam), torch.tensor([1.5, 5.5]))


def test_teacher_cam_max_normalised_and_zero_for_unchanged():
    cam = torch.tensor([[[[-1.0, 2.0], [4.0, 1.0]]], [[[3.0, 1.0], [0.0, 2.0]]]])
    out = teacher_cam(cam, torch.tensor([1.0, 0.0]))
    assert torch.allclose(out[0, 0], torch.tensor([[0.0, 0.5], [1.0, 0.25]]), atol=1e-4)
    assert torch.count_nonzero(out[1]) == 0


def test_config_validation():
    with pytest.raises(ValueError, match="combination"):
        NetworkConfig(combination="sum")
    with pytest.raises(ValueError, match="backbone"):
        NetworkConfig(backbone="vgg16")
    assert NetworkConfig(strides=(2, 2, 1, 1)).output_stride == 8


@pytest.mark.parametrize("backbone", ["resnet18n", "resnet50"])
def test_inference_preparation_keeps_the_outputs_and_drops_every_batchnorm(backbone):
    torch.manual_seed(0)
    net = SiameseCAM(NetworkConfig(backbone, "cat"))
    for m in net.modules():  # non-trivial running statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    net.eval()
    a, b = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        before = net(a, b)
        ready = for_inference(net, torch.device("cpu"))
        after = ready(a, b)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in ready.modules())
    assert ready.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(before, after, atol=1e-4 * before.abs().max().item())
