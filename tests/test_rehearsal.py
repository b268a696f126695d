"""The VOC-scale rehearsal's path on a smaller tree: VOC-sized JPEGs, the voc-strict configuration through rounds 0-1.

`make voc-rehearsal` runs the shipped network (DeepLab-v2 ResNet-101, crop 321) on more images and writes
`results/voc_rehearsal.csv`; here a ResNet-50 at output stride 16 and a small crop keep it to seconds.
"""
import pytest
from zls.rehearsal import rehearsal_params, rehearse


def test_the_shipped_configuration_is_what_the_rehearsal_runs():
    p = rehearsal_params()
    assert (p['backbone'], p['output_stride'], p['crop'], p['views']) == ('deeplabv2_resnet101', 8, 321, 'default')
    assert p['pretrained_backbone'] == '' and p['embeddings'] == 'glove'  # offline: random init, shipped GloVe


@pytest.mark.slow
def test_a_small_rehearsal_finishes_and_measures_every_stage(tmp_path):
    t = rehearse(tmp_path, n_train=1, n_val=1, n_sbd=0, backbone='deeplabv2_resnet50', output_stride=16, crop=129,
                 batch_size=2, threads=1, workers=0)
    got = dict(zip(t['what'], t['value']))
    for what in ('round 0: train', 'round 0: eval', 'round 1: label', 'round 1: label per image', 'round 1: train',
                 'round 1: eval', 'one loader worker (decode + augment)', 'peak resident memory of a round process'):
        assert got[what] > 0, what
    assert got['training images (train_aug)'] >= 1 and got['loader workers to feed 200 images/s'] >= 1
    assert (tmp_path / 'outputs' / 'rehearsal' / 'round_1' / 'pseudo' / 'quality.csv').is_file()  # six-view labels
