"""DeepLab-v2 (SPNet's and STRICT's network), and torchvision's ImageNet ResNet weights from torch's hub cache."""
import json
from pathlib import Path
from urllib.error import URLError
import pytest
import torch
import torch.nn as nn
import torchvision
from zls.model import build_model, imagenet_resnet_file, param_groups

EMB = torch.nn.functional.normalize(torch.randn(5, 16, generator=torch.Generator().manual_seed(0)), dim=1)
R50 = 'resnet50-0676ba61.pth'  # torchvision's file names for ResNet50/101_Weights.IMAGENET1K_V1
R101 = 'resnet101-63fe2227.pth'


def test_deeplabv2_layers_and_stride():
    m = build_model('deeplabv2_resnet50', EMB, output_stride=8).eval()
    convs = [c for c in m.head.modules() if isinstance(c, nn.Conv2d)]
    assert [c.dilation for c in convs] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert all(c.kernel_size == (3, 3) and c.padding == c.dilation and c.bias is not None for c in convs)
    assert {(c.in_channels, c.out_channels) for c in convs} == {(2048, 16)}
    assert not any(isinstance(b, nn.modules.batchnorm._BatchNorm) for b in m.head.modules())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert m.backbone(x)['out'].shape == (1, 2048, 8, 8)  # output stride 8
        out = m(x)
        assert out.shape == (1, 5, 64, 64)
        f = m.backbone(x)['out']
        assert torch.allclose(m.head({'out': f}), sum(c(f) for c in convs))  # the branches are summed
    head = {id(p) for p in m.head.parameters()} | {id(m.log_scale)}
    groups = {g['name']: g for g in param_groups(m, lr=1e-3)}
    assert {id(p) for p in groups['head']['params']} == head and groups['head']['lr'] == pytest.approx(1e-2)
    assert m.model_args == dict(backbone='deeplabv2_resnet50', freeze_bn=False, scale=10.0, output_stride=8,
                                atrous_rates=[6, 12, 18, 24])
    twin = build_model(**json.loads(json.dumps(m.model_args)), emb=EMB)  # checkpoints rebuild it
    twin.load_state_dict(m.state_dict())


def test_deeplabv3_stays_selectable():
    for name in ('deeplabv3_resnet50', 'deeplabv3plus_resnet50'):
        m = build_model(name, EMB, output_stride=16).eval()
        with torch.no_grad(): assert m(torch.randn(1, 3, 64, 64)).shape == (1, 5, 64, 64)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    "An empty torch hub cache under tmp_path (TORCH_HOME) and no network: every download raises URLError."
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    cache = tmp_path / 'torch' / 'hub' / 'checkpoints'
    # TORCH_HOME counts only while torch.hub.set_dir has not been called in this process
    assert torch.hub.get_dir() == str(cache.parent), 'torch.hub.set_dir was called earlier; TORCH_HOME is ignored'
    calls = []
    def no_network(url, *a, **kw):
        calls.append((url, kw))
        raise URLError('no network in this test')
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', no_network)
    return cache, calls


def test_imagenet_loads_from_hub_cache(offline_hub):
    cache, calls = offline_hub
    cache.mkdir(parents=True)
    ref = torchvision.models.resnet50()  # random weights standing in for torchvision's ImageNet ones
    torch.save(ref.state_dict(), cache / R50)
    assert imagenet_resnet_file(50) == cache / R50
    m = build_model('deeplabv2_resnet50', EMB, pretrained_backbone='imagenet')
    assert torch.equal(m.backbone.conv1.weight, ref.conv1.weight)
    assert torch.equal(m.backbone.layer4[2].conv3.weight, ref.layer4[2].conv3.weight)
    assert torch.equal(m.backbone.bn1.running_var, ref.bn1.running_var)
    assert calls == []  # offline: nothing was downloaded


def test_imagenet_offline_fails_on_one_line(offline_hub):
    cache, calls = offline_hub
    with pytest.raises(FileNotFoundError) as e:
        build_model('deeplabv2_resnet101', EMB, pretrained_backbone='imagenet')
    msg = str(e.value)
    assert '\n' not in msg
    assert R101 in msg and f'put it in {cache} ' in msg and f'https://download.pytorch.org/models/{R101}' in msg
    assert [(u, kw['model_dir']) for u, kw in calls] == [(f'https://download.pytorch.org/models/{R101}', str(cache))]


def test_imagenet_download_goes_to_hub_cache(offline_hub, monkeypatch):
    "A missing file is fetched by torch's own mechanism into the cache, then loaded from there."
    cache, _ = offline_hub
    ref = torchvision.models.resnet50()
    def download(url, model_dir=None, **kw):  # what torch.hub does, without the network: the file under the URL's name
        assert kw.get('check_hash') is True
        Path(model_dir).mkdir(parents=True, exist_ok=True)
        torch.save(ref.state_dict(), Path(model_dir) / url.rsplit('/', 1)[1])
        return ref.state_dict()
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', download)
    m = build_model('deeplabv2_resnet50', EMB, pretrained_backbone='imagenet')
    assert (cache / R50).is_file() and torch.equal(m.backbone.conv1.weight, ref.conv1.weight)


def test_local_path_still_works(tmp_path):
    ref = torchvision.models.resnet50()
    torch.save(ref.state_dict(), tmp_path / 'r50.pth')
    m = build_model('deeplabv2_resnet50', EMB, pretrained_backbone=str(tmp_path / 'r50.pth'))
    assert torch.equal(m.backbone.conv1.weight, ref.conv1.weight)
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        build_model('deeplabv2_resnet50', EMB, pretrained_backbone=tmp_path / 'nope.pth')


def test_small_has_no_imagenet_weights():
    with pytest.raises(ValueError, match='no ImageNet weights for the small backbone'):
        build_model('small', EMB, pretrained_backbone='imagenet')
