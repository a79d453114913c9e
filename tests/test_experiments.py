import pytest
import torch

from camkit.course import experiments as ex
from camkit.course import loop
from camkit.course.nets import CifarNet, MnistNet, n_parameters, variant1, variant2
from camkit.data.folders import find_fashion_mnist
from camkit.errors import CamkitError


@pytest.fixture(scope="module")
def digits():
    return ex.load_course_data("digits", cifar_shape=True, limit=400, test_limit=100)


@pytest.mark.parametrize("make,params", [
    (MnistNet, 260 + 5020 + 16050 + 510),
    (CifarNet, 456 + 2416 + 48120 + 10164 + 850),
    (variant1, 896 + 3 * 9248 + 8010),
    (variant2, 896 + 2 * (9248 + 64) + 36992 + 3 * (147584 + 256) + 1290),
])
def test_parameter_counts_by_hand(make, params):
    assert n_parameters(make()) == params


@pytest.mark.parametrize("make,shape", [(MnistNet, (2, 1, 28, 28)), (CifarNet, (2, 3, 32, 32)),
                                        (variant1, (2, 3, 32, 32)), (variant2, (2, 3, 32, 32))])
def test_output_shapes(make, shape):
    assert make()(torch.zeros(shape)).shape == (2, 10)


def test_stand_in_becomes_cifar_shaped(digits):
    assert digits.train_x.shape[1:] == (3, 32, 32) and digits.train_x.dtype == torch.uint8
    assert "stand-in" in digits.description and "3 channels" in digits.description
    assert digits.train_x[:, :, :2].sum() == 0  # the 2-pixel pad


@pytest.mark.parametrize("variant", [0, 2])
def test_tensor_loader_reproduces_the_course_loader(digits, variant):
    """Same seed and batch order: the fast loop's losses equal the torchvision DataLoader's
    (run with the tutorial's two worker processes)."""
    a = ex.run_cifar(variant, data=digits, epochs=3, loader="torchvision", quiet=True)
    b = ex.run_cifar(variant, data=digits, epochs=3, loader="tensor", quiet=True)
    assert len(a.step_losses) == len(b.step_losses) == 300
    assert max(abs(x - y) for x, y in zip(a.step_losses, b.step_losses)) < 1e-5


@pytest.mark.parametrize("variant", [0, 3, 5, 9])  # SGD+momentum, Adam, BatchNorm, weight decay
def test_fast_step_follows_the_course_step(digits, variant):
    """One flat optimizer call per step gives the losses of stepping each tensor (last-bit
    rounding aside), and the course step is really the course's (a plain torch optimizer)."""
    course = ex.run_cifar(variant, data=digits, epochs=2, fast=False, quiet=True)
    fast = ex.run_cifar(variant, data=digits, epochs=2, fast=True, quiet=True)
    assert len(fast.step_losses) == len(course.step_losses) == 200
    assert max(abs(x - y) for x, y in zip(fast.step_losses, course.step_losses)) < 1e-5


def test_flat_optimizer_keeps_weights_and_gradients_in_one_buffer():
    torch.manual_seed(0)
    model = CifarNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flat = loop.FlatOptimizer(model, lambda ps: torch.optim.SGD(ps, lr=0.1))
    assert flat.param.numel() == n_parameters(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # same weights, now views
    torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 2])).backward()
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert torch.equal(grads, flat.param.grad) and grads.abs().sum() > 0
    flat.step()
    assert torch.allclose(model.fc3.bias, before["fc3.bias"] - 0.1 * model.fc3.bias.grad)
    flat.zero_grad()
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    with pytest.raises(CamkitError, match="no trainable"):
        loop.FlatOptimizer(torch.nn.ReLU(), torch.optim.SGD)


def test_mnist_net_loaders_agree_with_dropout():
    data = ex.load_course_data("digits", limit=256, test_limit=64)
    runs = []
    for loader in ("torchvision", "tensor"):
        torch.manual_seed(0)
        model = MnistNet()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        dl = loop.make_loader(loader, data.train_x, data.train_y, 32, True, ex.MNIST_STATS,
                            torch.Generator().manual_seed(0))
        runs.append(loop.fit(model, dl, torch.nn.functional.nll_loss, opt)[2])
    assert runs[0] == pytest.approx(runs[1], abs=1e-6)


def test_variants_differ_from_the_baseline_where_they_should(digits):
    base = ex.run_cifar(0, data=digits, epochs=1, quiet=True)
    for v in (3, 4, 5, 6, 7, 9):
        other = ex.run_cifar(v, data=digits, epochs=1, quiet=True)
        assert other.step_losses != base.step_losses, v
    nll = ex.run_cifar(8, data=digits, epochs=1, quiet=True)
    assert max(abs(x - y) for x, y in zip(nll.step_losses, base.step_losses)) < 1e-6


def test_variant_grid_writes_table_and_figures(tmp_path, cli):
    code, out, err = cli("course", "variants", "--dataset", "digits", "--only", "1,8", "--epochs", "1",
                         "--limit", "200", "--test-limit", "50", "--out", tmp_path)
    assert code == 0, err
    table = (tmp_path / "variants.md").read_text()
    assert "digits" in table and "arch 1" in table and "Variant 8 is mathematically the baseline" in table
    rows = (tmp_path / "variants.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("variant,name,accuracy")
    assert (tmp_path / "variants_accuracy.png").stat().st_size > 5000
    assert (tmp_path / "variants_loss.png").stat().st_size > 5000


def test_cifar_tutorial_output(cli, tmp_path):
    code, out, err = cli("course", "cifar", "--dataset", "digits", "--epochs", "1", "--limit", "400",
                         "--test-limit", "100", "--log-every", "50", "--out", tmp_path)
    assert code == 0, err
    assert "[1,    50] loss:" in out and "GroundTruth:" in out and "Predicted:" in out
    assert "Accuracy of the network on the 100 test images" in out and out.count("Accuracy for class") == 10
    assert (tmp_path / "cifar_samples.png").exists()


def test_course_loop_verbatim_from_the_cli(cli, tmp_path):
    """--loader torchvision --course-step is the course's loop as written; it prints the same."""
    code, out, err = cli("course", "cifar", "--dataset", "digits", "--epochs", "1", "--limit", "200",
                         "--test-limit", "50", "--log-every", "25", "--loader", "torchvision", "--course-step",
                         "--out", tmp_path)
    assert code == 0, err
    assert out.count("[1, ") == 2 and "Accuracy of the network on the 50 test images" in out
    code, out, err = cli("course", "cifar", "--dataset", "digits", "--loader", "torchvision", "--workers", "-1",
                         "--out", tmp_path)
    assert code == 2 and "--workers must be 0 or more" in err and err.count("\n") == 1


def test_mnist_homework_on_digits(tmp_path, capsys):
    r = ex.run_mnist("digits", epochs=2, limit=512, test_limit=128, lr=0.05, out=tmp_path)
    lines = capsys.readouterr().out.splitlines()
    assert "digits" in lines[0]
    assert sum("training loss is" in s for s in lines) == 2 and sum("validation loss is" in s for s in lines) == 2
    assert r.epochs[-1].train_loss < r.epochs[0].train_loss
    assert all((tmp_path / n).exists() for n in ("mnist_curves.png", "mnist_samples.png"))


@pytest.mark.skipif(find_fashion_mnist() is None, reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_stand_in_learns():
    r = ex.run_mnist("fashion-mnist", epochs=2, limit=2000, test_limit=500, lr=0.1, quiet=True)
    assert "fashion-mnist" in r.data and r.epochs[-1].valid_accuracy > 0.6  # chance is 0.1


def test_unnormalise_inverts_normalise():
    x = torch.rand(3, 8, 8)
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1), torch.tensor([0.2, 0.3, 0.25]).view(3, 1, 1)
    stats = ((0.5, 0.4, 0.3), (0.2, 0.3, 0.25))
    assert torch.allclose(ex.unnormalise((x - mean) / std, stats), x, atol=1e-6)


def test_augmentation_crops_and_flips_within_the_padding():
    """Each output is exactly one of the (2*pad+1)^2 crops of the zero-padded image, mirrored or
    not; over 32 images both mirrored and plain crops occur, and more than one offset."""
    pad, n = 2, 32
    x = torch.arange(n * 6 * 6, dtype=torch.float32).view(n, 1, 6, 6) + 1
    out = loop.augment_batch(x, torch.Generator().manual_seed(3), pad=pad)
    assert out.shape == x.shape
    seen = []
    for o, src in zip(out, x):
        padded = torch.nn.functional.pad(src, (pad,) * 4)
        matches = [(oy, ox, flip) for oy in range(2 * pad + 1) for ox in range(2 * pad + 1) for flip in (False, True)
                   if torch.equal(o, (lambda c: c.flip(-1) if flip else c)(padded[:, oy:oy + 6, ox:ox + 6]))]
        assert len(matches) == 1
        seen.append(matches[0])
    assert {f for _, _, f in seen} == {False, True}
    assert len({(oy, ox) for oy, ox, _ in seen}) > 1 and any((oy, ox) != (pad, pad) for oy, ox, _ in seen)


def test_unavailable_dataset_names_the_alternatives(monkeypatch, tmp_path):
    import torchvision

    def offline(*a, **k):
        raise RuntimeError("Dataset not found. You can use download=True to download it")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(CamkitError, match="fashion-mnist or --dataset digits"):
        ex.load_course_data("mnist", tmp_path)
    with pytest.raises(CamkitError, match="--dataset must be one of mnist, fashion-mnist, digits, cifar10"):
        ex.load_course_data("imagenet")
