"""Tests for the MIL pooling heads and the anomaly model."""
import numpy as np
import pytest
import torch

from lib.core.errors import DataError
from lib.models.anomaly import anomaly_scores, fit_anomaly_model
from lib.models.heads import HEAD_NAMES, create_head

IN_DIM = 12


def _inputs(n: int, clinical_dim: int, seed: int = 0):
    """Random bag features, clinical vector (or None) and anomaly scores."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN_DIM, generator=g)
    clinical = torch.randn(clinical_dim, generator=g) if clinical_dim else None
    return x, clinical, torch.randn(n, generator=g)


@pytest.mark.parametrize("clinical_dim", [0, 3])
@pytest.mark.parametrize("n", [1, 200])
@pytest.mark.parametrize("name", HEAD_NAMES)
def test_head_shapes_weights_and_grads(name, n, clinical_dim):
    torch.manual_seed(0)
    head = create_head(name, IN_DIM, clinical_dim=clinical_dim, hidden_dim=16, dropout=0.1)
    x, clinical, anomaly = _inputs(n, clinical_dim)
    out = head(x, clinical=clinical, anomaly=anomaly)
    assert out["logit"].shape == () and out["weights"].shape == (n,)
    assert torch.isfinite(out["logit"]) and torch.isfinite(out["weights"]).all()
    assert (out["weights"] >= 0).all()
    if head.weights_sum_to_one:
        assert out["weights"].sum().item() == pytest.approx(1.0, abs=1e-5)
    if "scores" in out:
        assert out["scores"].shape == (n,)
    torch.nn.functional.binary_cross_entropy_with_logits(out["logit"], torch.tensor(1.0)).backward()
    grads = [p.grad for p in head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(1)
    head = create_head(name, IN_DIM, clinical_dim=2, hidden_dim=16)
    x, clinical, anomaly = _inputs(9, 2, seed=1)
    head(x, clinical=clinical, anomaly=anomaly)["logit"].backward()
    for pname, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_padded_batch_matches_single_bags(name):
    torch.manual_seed(2)
    head = create_head(name, IN_DIM, clinical_dim=2, hidden_dim=16).eval()
    x, clinical, anomaly = torch.randn(3, 8, IN_DIM), torch.randn(3, 2), torch.randn(3, 8)
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2, 1:] = False
    x[~mask] = float("nan")  # padding content must not leak
    batch = head(x, clinical=clinical, anomaly=anomaly, mask=mask)
    assert batch["logit"].shape == (3,) and batch["weights"].shape == (3, 8)
    assert (batch["weights"][~mask] == 0).all()
    for b in range(3):
        one = head(x[b][mask[b]], clinical=clinical[b], anomaly=anomaly[b][mask[b]])
        assert torch.allclose(batch["logit"][b], one["logit"], atol=1e-5)
        assert torch.allclose(batch["weights"][b][mask[b]], one["weights"], atol=1e-5)


@pytest.mark.parametrize("name", ["mean", "max"])
@pytest.mark.parametrize("mode", ["embedding", "score"])
def test_mean_max_modes(name, mode):
    head = create_head(name, IN_DIM, clinical_dim=1, mode=mode)
    out = head(torch.randn(6, IN_DIM), clinical=torch.randn(1))
    assert out["weights"].sum().item() == pytest.approx(1.0, abs=1e-6)
    assert ("scores" in out) == (mode == "score")


def test_max_score_picks_argmax_and_topk_selects_k():
    torch.manual_seed(3)
    x = torch.randn(10, IN_DIM)
    out = create_head("max", IN_DIM)(x)
    assert out["weights"].argmax() == out["scores"].argmax() and out["weights"].max() == 1
    out = create_head("topk", IN_DIM, k=3)(x)
    chosen = set(out["scores"].topk(3).indices.tolist())
    assert set(torch.nonzero(out["weights"]).flatten().tolist()) == chosen
    assert out["logit"].item() == pytest.approx(out["scores"].topk(3).values.mean().item(), abs=1e-6)


def test_anomaly_scale_steers_attention():
    head = create_head("anomaly", IN_DIM, anomaly_scale_init=50.0)
    anomaly = torch.zeros(20)
    anomaly[7] = 3.0
    assert head(torch.randn(20, IN_DIM), anomaly=anomaly)["weights"].argmax().item() == 7


def test_instance_bn_weights_in_unit_interval_eval():
    head = create_head("instance_bn", IN_DIM)
    head(torch.randn(30, IN_DIM))  # training step updates running stats
    w = head.eval()(torch.randn(5, IN_DIM))["weights"]
    assert ((w > 0) & (w < 1)).all()


def raises_programming_error(match: str):
    """A ValueError that is NOT the bad-input DataError: a caller's bug must give a traceback, not exit 2."""
    class Check:
        def __enter__(self):
            self.ctx = pytest.raises(ValueError, match=match)
            self.info = self.ctx.__enter__()

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            assert not isinstance(self.info.value, DataError), f"{self.info.value!r} is a DataError"
            return handled
    return Check()


@pytest.mark.parametrize(
    "kwargs, call, match, user_input",
    [
        ({"name": "nope"}, {}, "unknown MIL head", True),
        ({"name": "attention", "bogus": 1}, {}, "unknown option", True),
        ({"name": "topk", "k": 0}, {}, "k=0 must be a whole number", True),
        ({"name": "chowder", "k": 2.5}, {}, "k=2.5 must be a whole number", True),
        ({"name": "chowder", "k": "five"}, {}, "k='five' must be a whole number", True),
        ({"name": "attention", "dropout": -1}, {}, r"dropout=-1 must be in \[0, 1\)", True),
        ({"name": "attention", "hidden_dim": 0}, {}, "hidden_dim=0 must be a whole number", True),
        ({"name": "anomaly", "anomaly_feature": "yes"}, {}, "must be true or false", True),
        ({"name": "attention", "clinical_dim": 2}, {}, "clinical must have 2", False),
        ({"name": "attention"}, {"clinical": torch.zeros(2)}, "clinical_dim=0", False),
        ({"name": "anomaly"}, {}, "anomaly scores", False),
    ],
)
def test_head_errors(kwargs, call, match, user_input):
    """Bad options (from --head/--head-args) are bad input; inconsistent calls are programming errors."""
    with (pytest.raises(DataError, match=match) if user_input else raises_programming_error(match)):
        name = kwargs.pop("name")
        create_head(name, IN_DIM, **kwargs)(torch.randn(4, IN_DIM), **call)


def test_chowder_takes_a_whole_float_k_from_yaml():
    """--head-args "{k: 5.0}": the MLP is built from the validated k (it was the raw 5.0: a TypeError)."""
    head = create_head("chowder", IN_DIM, k=5.0, hidden_dim=8)
    assert head.k == 5 and head(torch.randn(7, IN_DIM))["logit"].shape == ()


def test_bad_feature_shapes_are_programming_errors():
    head = create_head("mean", IN_DIM)
    with raises_programming_error("empty bag"):
        head(torch.randn(0, IN_DIM))
    with raises_programming_error("features must be"):
        head(torch.randn(4, IN_DIM + 1))
    with raises_programming_error("empty bag"):
        head(torch.randn(2, 3, IN_DIM), mask=torch.tensor([[True] * 3, [False] * 3]))


def test_anomaly_model_fit_and_score():
    rng = np.random.default_rng(0)
    reactive = rng.normal(size=(300, 20))
    model = fit_anomaly_model(reactive, n_components=2, seed=0, pca_dim=8)
    train_scores = anomaly_scores(model, reactive)
    assert train_scores.shape == (300,) and train_scores.dtype == np.float32
    assert abs(train_scores.mean()) < 1e-4 and train_scores.std() == pytest.approx(1.0, abs=1e-3)
    shifted = anomaly_scores(model, rng.normal(size=(50, 20)) + 4.0)
    assert shifted.mean() > train_scores.mean() + 2
    again = anomaly_scores(fit_anomaly_model(reactive, n_components=2, seed=0, pca_dim=8), reactive)
    np.testing.assert_allclose(again, train_scores, rtol=1e-5, atol=1e-5)
    raw = anomaly_scores(model, reactive[:5], standardize=False)
    assert (raw > 0).all()


def test_anomaly_model_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match="too few"):
        fit_anomaly_model(rng.normal(size=(3, 5)), n_components=4)
    with raises_programming_error("finite"):
        fit_anomaly_model(np.full((10, 5), np.nan))
    model = fit_anomaly_model(rng.normal(size=(40, 5)), n_components=2)
    with raises_programming_error("dim 6"):
        anomaly_scores(model, rng.normal(size=(4, 6)))


@pytest.mark.parametrize("name", ["mean", "attention", "instance_bn", "anomaly"])
def test_gated_fusion_mixes_an_image_expert_and_a_clinical_expert(name):
    head = create_head(name, IN_DIM, clinical_dim=3, fusion="gate")
    x, clinical = torch.randn(2, 5, IN_DIM), torch.randn(2, 3)
    anomaly = torch.randn(2, 5) if name == "anomaly" else None
    out = head(x, clinical=clinical, anomaly=anomaly)
    assert out["logit"].shape == (2,) and out["weights"].shape == (2, 5) and ((out["gate"] > 0) & (out["gate"] < 1)).all()
    image = head.image(x, anomaly=anomaly)["logit"]
    expert = head.expert(clinical).squeeze(-1)
    torch.testing.assert_close(out["logit"], out["gate"] * image + (1 - out["gate"]) * expert)
    out["logit"].sum().backward()
    assert head.gate.weight.grad.abs().sum() > 0 and head.expert.weight.grad.abs().sum() > 0
    head.eval()  # instance_bn's BatchNorm depends on the batch in training mode
    batch = head(x, clinical=clinical, anomaly=anomaly)["logit"]
    single = head(x[0], clinical=clinical[0], anomaly=None if anomaly is None else anomaly[0])
    torch.testing.assert_close(single["logit"], batch[0])


def test_gated_fusion_needs_the_clinical_features():
    with pytest.raises(DataError, match="clinical fusion 'sum'"):
        create_head("mean", IN_DIM, clinical_dim=3, fusion="sum")
    assert not hasattr(create_head("mean", IN_DIM, clinical_dim=0, fusion="gate"), "gate")  # images only: no gate


def test_the_light_head_names_are_the_registry():
    """lib.models.options.HEAD_NAMES (what --head accepts, no torch import) names exactly the heads built here."""
    from lib.models.heads import HEADS
    assert tuple(HEADS) == HEAD_NAMES
