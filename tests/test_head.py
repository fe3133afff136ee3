import torch
import torch.nn.functional as F

from components.head.model import RETHINK, SAFE, UNSAFE, SafetyHead
from components.head.loss import LossWeights, craft_loss, info_nce, order_loss, proto_loss
from components.lm.latents import LatentSpec


def _toy(n=48, d=16, seed=0):
    """Three classes around different means; rethink halfway between safe and unsafe."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.zeros(3, d)
    centres[SAFE, 0], centres[UNSAFE, 0], centres[RETHINK, 0] = 3.0, -3.0, 0.0
    centres[RETHINK, 1] = 3.0
    h = centres[y] + torch.randn(n, d, generator=g)
    return h, h + 0.05 * torch.randn(n, d, generator=g), y


def test_save_load_round_trip(tmp_path):
    head = SafetyHead(16, 32, 8, LatentSpec(layers=(-1, -2), pooling="last"))
    head.set_input_stats(torch.randn(10, 16))
    head.save(tmp_path / "h", extra={"model_id": "tiny"})
    loaded = SafetyHead.load(tmp_path / "h")
    x = torch.randn(5, 16)
    head.eval()
    for a, b in zip(head(x), loaded(x)):
        assert torch.equal(a, b)
    assert torch.equal(head.prototypes, loaded.prototypes) and loaded.spec == head.spec


def test_proto_loss_moves_safe_samples_toward_safe_prototype():
    """The sign the whole method rests on: a gradient step raises cos(z_safe, μ_safe)."""
    torch.manual_seed(0)
    protos = F.normalize(torch.randn(3, 8), dim=-1)
    raw = torch.randn(6, 8, requires_grad=True)
    labels = torch.full((6,), SAFE)
    before = (F.normalize(raw, dim=-1) @ protos[SAFE]).mean()
    loss = proto_loss(F.normalize(raw, dim=-1) @ protos.T, labels, margin=2.0)
    loss.backward()
    with torch.no_grad():
        after = (F.normalize(raw - 0.5 * raw.grad, dim=-1) @ protos[SAFE]).mean()
    assert loss > 0 and after > before


def test_proto_loss_zero_when_well_separated():
    cos = torch.tensor([[0.9, -0.9, 0.0], [-0.9, 0.9, 0.0]])
    assert proto_loss(cos, torch.tensor([SAFE, UNSAFE]), 0.2) == 0
    assert proto_loss(cos, torch.tensor([UNSAFE, SAFE]), 0.2) > 0  # swapped labels are penalised


def test_info_nce_prefers_matching_positive():
    z = F.normalize(torch.randn(4, 8), dim=-1)
    assert info_nce(z, z, None, 0.1) < info_nce(z, z.roll(1, 0), None, 0.1)


def test_info_nce_masks_the_rows_own_queue_entries():
    z = F.normalize(torch.randn(4, 8), dim=-1)
    ids = torch.arange(4)
    unmasked = info_nce(z, z, z.clone(), 0.1)  # queue holds the same rows: false negatives
    masked = info_nce(z, z, z.clone(), 0.1, ids, ids)
    assert masked < unmasked


def test_order_loss_penalises_rethink_outside_the_middle():
    labels = torch.tensor([SAFE, UNSAFE, RETHINK])
    middle = torch.tensor([[0.9, -0.9, 0], [-0.9, 0.9, 0], [0.0, 0.0, 0]])
    outside = torch.tensor([[0.9, -0.9, 0], [-0.9, 0.9, 0], [-0.9, 0.9, 0]])
    assert order_loss(middle, labels, 0.2) == 0 and order_loss(outside, labels, 0.2) > 0


def test_training_reduces_loss_and_separates():
    from components.train_head import _epoch, TrainHeadConfig

    torch.manual_seed(0)
    h, h_aug, y = _toy()
    cfg = TrainHeadConfig(hidden_dim=32, out_dim=16, lr=3e-3, batch_size=16)
    head = SafetyHead(16, 32, 16)
    head.set_input_stats(h)
    with torch.no_grad():
        head.init_prototypes(head.embed(h), y)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr)
    queue, gen = (torch.empty(0, 16), torch.empty(0, dtype=torch.long)), torch.Generator().manual_seed(0)
    first, queue = _epoch(head, opt, h, h_aug, y, cfg, queue, gen)
    for _ in range(15):
        last, queue = _epoch(head, opt, h, h_aug, y, cfg, queue, gen)
    assert last["total"] < first["total"] and last["ce"] < first["ce"]
    s = head.eval().score(h)
    assert s["r_lat"][y == SAFE].mean() > s["r_lat"][y == UNSAFE].mean()
    assert s["p_safe"][y == SAFE].mean() > s["p_safe"][y == UNSAFE].mean()


def test_ema_moves_prototype_toward_batch_mean():
    head = SafetyHead(4, 8, 4)
    target = F.normalize(torch.ones(1, 4), dim=-1)
    before = float(head.prototypes[SAFE] @ target[0])
    head.update_prototypes(target.repeat(3, 1), torch.full((3,), SAFE), momentum=0.5)
    assert float(head.prototypes[SAFE] @ target[0]) > before
    assert torch.allclose(head.prototypes.norm(dim=-1), torch.ones(3))


def test_craft_loss_terms_are_finite():
    z = F.normalize(torch.randn(6, 8), dim=-1)
    terms = craft_loss(z, z, torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2]),
                       F.normalize(torch.randn(3, 8), dim=-1), torch.empty(0, 8), LossWeights())
    assert all(torch.isfinite(v) for v in terms.values())
