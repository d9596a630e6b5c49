import pytest
import torch

from model_src.resnn import SEED_WIDTHS, ResNN, inference_gflops


def expected_params(widths, num_classes=2):
    """Count by hand from the block definition: two 3x3 convs, a 1x1 projection, three BNs per block."""
    total, cin = 0, 3
    for w in widths:
        total += cin * w * 9 + w * w * 9 + cin * w  # conv1, conv2, shortcut conv (no biases)
        total += 3 * 2 * w  # BN weight + bias, three BNs
        cin = w
    return total + widths[-1] * num_classes + num_classes


@pytest.mark.parametrize("widths", [SEED_WIDTHS, (8, 16, 16, 32), (48, 96, 192, 384)])
def test_parameter_count_matches_design(widths):
    model = ResNN(widths=widths)
    assert sum(p.numel() for p in model.parameters()) == expected_params(widths)


@pytest.mark.parametrize("size", [64, 128, 144, 192])
def test_output_shape_and_downsampling(size):
    model = ResNN().eval()
    with torch.no_grad():
        feats = model.blocks(torch.zeros(3, 3, size, size))
        logits = model(torch.zeros(3, 3, size, size))
    assert feats.shape == (3, 256, size // 16, size // 16)  # four stride-2 blocks
    assert logits.shape == (3, 2)


def test_widths_must_be_four_blocks():
    with pytest.raises(ValueError):
        ResNN(widths=(32, 64, 128))


def test_model_file_imports_only_torch():
    import ast
    from pathlib import Path

    import model_src.resnn as resnn

    tree = ast.parse(Path(resnn.__file__).read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert roots <= {"torch", "__future__"}


def test_seed_model_costs_the_issues_0_98_gflop_at_192px():
    model = ResNN(2, SEED_WIDTHS)
    assert inference_gflops(model, 192) == pytest.approx(0.98, abs=0.005)
    # Convolutions scale with pixels: 144 px is (144/192)^2 of the cost, give or take the head.
    assert inference_gflops(model, 144) == pytest.approx(0.98 * (144 / 192) ** 2, rel=0.02)
    assert model.training  # measuring does not leave the model in eval mode
