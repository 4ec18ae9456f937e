"""Episode sampler properties: shapes, labels, disjoint support/query, determinism, errors."""
import pytest
import torch

from metafsl.data.base import from_class_lists
from metafsl.data.sampler import EpisodeSampler, Preprocess, metaoptnet_augment
from metafsl.errors import UserError


def make_split(n_classes=12, per_class=(6,), size=4, channels=1):
    """Every image is filled with a unique id (its global index) so episodes can be decoded."""
    per, k = [], 0
    for c in range(n_classes):
        n = per_class[c % len(per_class)]
        ids = torch.arange(k, k + n)
        k += n
        per.append(ids.view(n, 1, 1, 1).expand(n, channels, size, size).to(torch.uint8))
    return from_class_lists(per, [f"c{c}" for c in range(n_classes)], groups=[c // 4 for c in range(n_classes)])


def ids(x):
    return (x[..., 0, 0, 0] * 255).round().long()


def test_shapes_and_labels():
    split = make_split()
    s = EpisodeSampler(split, n_way=5, n_shot=2, n_query=3, seed=0)
    b = s.sample(4)
    assert b.support_x.shape == (4, 10, 1, 4, 4) and b.query_x.shape == (4, 15, 1, 4, 4)
    assert b.support_x.dtype == torch.float32 and 0 <= b.support_x.min() and b.support_x.max() <= 1
    assert b.support_y[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert b.query_y[0].tolist() == sum([[k] * 3 for k in range(5)], [])


def test_support_and_query_are_disjoint_and_labels_match_classes():
    split = make_split(per_class=(5, 7, 9))
    s = EpisodeSampler(split, n_way=4, n_shot=2, n_query=3, seed=1)
    for _ in range(20):
        b = s.sample(1)
        sup, qry = ids(b.support_x[0]), ids(b.query_x[0])
        assert not set(sup.tolist()) & set(qry.tolist())
        assert len(set(sup.tolist())) == len(sup) and len(set(qry.tolist())) == len(qry)
        # all images carrying the same episode label come from the same original class
        lab_of = split.labels
        for k in range(4):
            classes = set(lab_of[sup[b.support_y[0] == k]].tolist()) | set(lab_of[qry[b.query_y[0] == k]].tolist())
            assert len(classes) == 1
        # distinct episode labels are distinct classes
        assert len({int(lab_of[sup[b.support_y[0] == k]][0]) for k in range(4)}) == 4


def test_deterministic_by_seed_and_independent_of_batching():
    split = make_split()
    a = EpisodeSampler(split, 5, 1, 2, seed=7)
    b = EpisodeSampler(split, 5, 1, 2, seed=7)
    c = EpisodeSampler(split, 5, 1, 2, seed=8)
    one_by_one = torch.cat([a.sample(1).support_x for _ in range(6)])
    batched = b.sample(6).support_x
    assert torch.equal(one_by_one, batched)
    assert not torch.equal(batched, c.sample(6).support_x)


def test_state_dict_resumes_the_stream():
    split = make_split()
    a = EpisodeSampler(split, 5, 1, 2, seed=3)
    a.sample(3)
    state = a.state_dict()
    nxt = a.sample(2).query_x
    b = EpisodeSampler(split, 5, 1, 2, seed=99)
    b.load_state_dict(state)
    assert torch.equal(b.sample(2).query_x, nxt)


def test_classes_too_small_are_left_out_not_oversampled():
    split = make_split(per_class=(3, 10))
    s = EpisodeSampler(split, n_way=3, n_shot=2, n_query=4, seed=0)
    assert s.excluded_classes == 6
    for _ in range(10):
        sup = ids(s.sample(1).support_x[0])
        assert all(split.labels[i] % 2 == 1 for i in sup)


def test_within_group_episodes_use_one_group():
    split = make_split()
    s = EpisodeSampler(split, n_way=3, n_shot=1, n_query=1, seed=0, within_group=True)
    for _ in range(10):
        sup = ids(s.sample(1).support_x[0])
        assert len({int(split.groups[split.labels[i]]) for i in sup}) == 1


@pytest.mark.parametrize("way,shot,query,needle", [(13, 1, 1, "only 12 classes"),
                                                   (5, 4, 3, "images per class"),
                                                   (5, 0, 3, "at least 1")])
def test_impossible_episodes_are_user_errors(way, shot, query, needle):
    with pytest.raises(UserError, match=needle):
        EpisodeSampler(make_split(), way, shot, query)


def test_pixels_normalise_and_augment_keep_shape_and_range():
    x = torch.randint(0, 256, (2, 3, 3, 8, 8), dtype=torch.uint8)
    p = Preprocess([0.5, 0.5, 0.5], [0.25, 0.25, 0.25], augment="metaoptnet")
    y = p(x, train=False)
    assert torch.allclose(y, (x.float() / 255 - 0.5) / 0.25)
    z = metaoptnet_augment(x.view(-1, 3, 8, 8).float() / 255)
    assert z.shape == (6, 3, 8, 8) and z.min() >= 0 and z.max() <= 1
    with pytest.raises(UserError):
        Preprocess(augment="nope")
