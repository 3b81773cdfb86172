"""The weighted kNN probe."""

import torch

from selfsup.analysis.knn import checkpoint_knn, knn_accuracy, knn_predict


def clusters(n_per_class, num_classes, dim=16, spread=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=g), labels


def test_separated_clusters_are_classified_perfectly():
    x, y = clusters(20, 5)
    q, qy = clusters(4, 5, seed=0)
    assert knn_accuracy(x, y, q + 0.01, qy) == 100.0


def test_features_unrelated_to_labels_give_about_chance():
    g = torch.Generator().manual_seed(1)
    x, q = torch.randn(2000, 8, generator=g), torch.randn(1000, 8, generator=g)
    y, qy = torch.randint(0, 4, (2000,), generator=g), torch.randint(0, 4, (1000,), generator=g)
    assert 18.0 < knn_accuracy(x, y, q, qy) < 32.0


def test_votes_are_weighted_by_similarity():
    # Two far neighbours of class 1 outvote nothing against one near neighbour
    # of class 0 when t is small: the exp(sim / t) weight dominates.
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.05]])
    assert knn_predict(train, labels, query, 2, k=3, t=0.07).item() == 0
    assert knn_predict(train, labels, query, 2, k=3, t=100.0).item() == 1


def test_checkpoint_knn_uses_the_checkpoint_weights(tiny_data, tmp_path):
    from selfsup.analysis.embeddings import extract
    from selfsup.core import checkpoint as ck
    from selfsup.data import augment
    from selfsup.data import folders as D
    from selfsup.models.backbones import create_backbone

    torch.manual_seed(3)
    model, _ = create_backbone("resnet18")
    path = str(tmp_path / "ck.pth.tar")
    state = {f"module.encoder_q.{k}": v for k, v in model.state_dict().items()}
    ck.save_checkpoint({"epoch": 1, "arch": "resnet18", "state_dict": state}, path)
    feats = []
    for split in ("train", "val"):
        ds = D.image_folder(f"{tiny_data}/{split}", augment.eval_transform(16))
        feats += [torch.from_numpy(a) for a in extract(model, torch.utils.data.DataLoader(ds, batch_size=50))]
    expected = knn_accuracy(*feats)
    assert checkpoint_knn("resnet18", path, tiny_data, image_size=16) == expected
    assert 0.0 <= checkpoint_knn("resnet18", None, tiny_data, image_size=16) <= 100.0


def test_random_init_knn_is_drawn_from_its_seed(tiny_data, monkeypatch):
    # The random init's weights (not only its coarse accuracy) follow `seed`,
    # whatever the global generator held before.
    import selfsup.analysis.knn as knn

    drawn = []
    real = knn.create_backbone

    def spy(arch):
        model = real(arch)
        drawn.append(next(model[0].parameters()).detach().clone())
        return model

    monkeypatch.setattr(knn, "create_backbone", spy)
    torch.manual_seed(123)
    first = knn.checkpoint_knn("resnet18", None, tiny_data, 16, seed=5)
    torch.randn(1000)  # whatever ran before
    assert knn.checkpoint_knn("resnet18", None, tiny_data, 16, seed=5) == first
    knn.checkpoint_knn("resnet18", None, tiny_data, 16, seed=6)
    assert torch.equal(drawn[0], drawn[1]) and not torch.equal(drawn[0], drawn[2])
