"""The shared training infrastructure: batch plan, EMA, checkpoints, grids, launch command."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from ops.training.batches import GlobalBatchPlan
from ops.training.checkpoint import CheckpointStore, atomic_directory
from ops.training.ema import EMA
from ops.training.fingerprint import config_fingerprint
from ops.training.grids import image_grid
from ops.training.launch import accelerate_command
from ops.training.runtime import create_accelerator


def test_global_batch_is_the_same_for_any_number_of_processes():
    single = GlobalBatchPlan(10, 4, seed=1).batch(7)
    halves = [GlobalBatchPlan(10, 4, seed=1, rank=r, world_size=2).batch(7) for r in (0, 1)]
    assert torch.equal(torch.cat([h.indices for h in halves]), single.indices)
    # random draws: each process gets its rows of the same global draw
    assert torch.equal(torch.cat([h.randn(3) for h in halves]), single.randn(3))
    assert torch.equal(torch.cat([h.randint(0, 1000) for h in halves]), single.randint(0, 1000))


def test_batch_plan_visits_every_item_once_per_epoch_and_reshuffles():
    plan = GlobalBatchPlan(12, 4, seed=0)
    epoch0 = torch.cat([plan.batch(s).indices for s in range(3)])
    epoch1 = torch.cat([plan.batch(s).indices for s in range(3, 6)])
    assert sorted(epoch0.tolist()) == list(range(12)) == sorted(epoch1.tolist())
    assert not torch.equal(epoch0, epoch1)
    # a fresh plan (a resumed run) yields the same batch at the same step
    assert torch.equal(GlobalBatchPlan(12, 4, seed=0).batch(4).indices, plan.batch(4).indices)


def test_global_batch_must_split_evenly():
    with pytest.raises(ValueError, match="divisible"):
        GlobalBatchPlan(10, 5, seed=0, rank=0, world_size=2)


def test_ema_warms_up_then_tracks_the_model():
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.99)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(2000):
        ema.update(model)
    target = torch.nn.Linear(2, 1, bias=False)
    ema.copy_to(target)
    assert torch.allclose(target.weight, torch.ones(1, 2), atol=1e-3)
    restored = EMA(torch.nn.Linear(2, 1, bias=False), decay=0.99)
    restored.load_state_dict(ema.state_dict())
    assert restored.num_updates == 2000
    assert torch.equal(restored.shadow["weight"], ema.shadow["weight"])


def test_checkpoint_round_trip_and_fingerprint(tmp_path):
    accelerator = create_accelerator("no")
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    ema = EMA(model, 0.9)
    store = CheckpointStore(tmp_path / "ckpt", fingerprint="abc")
    store.save(
        accelerator, 5, modules={"model": model, "ema": ema}, optimizer=optimizer, state={"x": 1}
    )
    # a half-written later checkpoint (killed while writing) is ignored
    (tmp_path / "ckpt" / ".step-00000009.tmp").mkdir()
    latest = store.latest()
    assert latest is not None and latest.step == 5 and latest.state["x"] == 1
    assert not list(latest.path.glob("*.bin"))

    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    fresh_ema = EMA(fresh, 0.9)
    store.load(latest, accelerator, modules={"model": fresh, "ema": fresh_ema}, optimizer=fresh_opt)
    assert torch.equal(fresh.weight, model.weight)
    assert torch.equal(
        fresh_opt.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )
    assert CheckpointStore(tmp_path / "ckpt", fingerprint="other").latest() is None
    store.save(accelerator, 10, modules={"model": model}, optimizer=optimizer, state={})
    assert [p.name for p in (tmp_path / "ckpt").glob("step-*")] == ["step-00000010"]


def test_fingerprint_ignores_execution_keys_only():
    cfg = {"learning_rate": 0.1, "steps": 10, "num_processes": 1}
    same = {"learning_rate": 0.1, "steps": 99, "num_processes": 4}
    assert config_fingerprint(cfg, "data") == config_fingerprint(same, "data")
    assert config_fingerprint(cfg, "data") != config_fingerprint(
        {**cfg, "learning_rate": 1}, "data"
    )
    assert config_fingerprint(cfg, "data") != config_fingerprint(cfg, "other data")


def test_atomic_directory_keeps_the_old_content_on_failure(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "a.json").write_text(json.dumps(1))
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "a.json").write_text(json.dumps(2))
        raise RuntimeError("killed")
    assert json.loads((target / "a.json").read_text()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_image_grid_lays_out_rows_with_labels():
    tiles = [Image.new("RGB", (8, 8), c) for c in ["red", "green", "blue", "white"]]
    grid = image_grid(tiles, cols=2, row_labels=["a", "b"], pad=2)
    assert grid.size[1] == 2 * (8 + 2) + 2
    assert grid.getpixel((grid.size[0] - 3, grid.size[1] - 3)) == (255, 255, 255)


def test_accelerate_command_starts_n_processes_on_cpu(tmp_path):
    cmd = accelerate_command(
        "teacher", num_processes=2, data_root=tmp_path, preset="micro", port=1234
    )
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert "--multi_gpu" in cmd and "--cpu" not in cmd
    assert cmd[cmd.index("--num_processes") + 1] == "2"
    assert cmd[cmd.index("-m", 3) :][:3] == ["-m", "ops.entry", "teacher"]
    assert cmd[-4:] == ["--preset", "micro", "--data", str(tmp_path)]


def _toy_run(directory, steps: int):
    """Train a linear model with the shared loop, resuming from ``directory``'s checkpoints."""
    from ops.training.loop import LoopSettings, train_loop
    from ops.training.runtime import seed_everything

    accelerator = create_accelerator("no")
    seed_everything(0)
    xs = torch.randn(40, 3, generator=torch.Generator().manual_seed(1))
    ys = xs @ torch.tensor([1.0, -2.0, 0.5]) + 0.1
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    model, optimizer = accelerator.prepare(model, optimizer)
    ema = EMA(model, 0.9)
    store = CheckpointStore(directory, fingerprint="toy")
    settings = LoopSettings(
        steps=steps, checkpoint_every=3, log_every=1, learning_rate=0.05, warmup_steps=2
    )

    def loss_fn(batch):
        noise = batch.randn() * 0.01  # the step's randomness comes from the plan
        return ((model(xs[batch.indices]).squeeze(1) - ys[batch.indices] - noise) ** 2).mean()

    plan = GlobalBatchPlan(40, 8, seed=0)
    result = train_loop(
        accelerator,
        model,
        optimizer,
        loss_fn,
        plan,
        settings,
        store,
        ema=ema,
        resume=store.latest(),
    )
    return result, model, ema


def test_resumed_training_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
    straight, model_a, ema_a = _toy_run(tmp_path / "a", steps=8)
    _toy_run(tmp_path / "b", steps=4)  # checkpoint at step 3, step 4 lost as if killed
    resumed, model_b, ema_b = _toy_run(tmp_path / "b", steps=8)
    assert resumed.resumed_from == 3 and straight.resumed_from == 0
    assert torch.equal(model_a.weight, model_b.weight) and torch.equal(model_a.bias, model_b.bias)
    assert torch.equal(ema_a.shadow["weight"], ema_b.shadow["weight"])
    assert resumed.loss_curve == straight.loss_curve
    again, model_c, _ = _toy_run(tmp_path / "c", steps=8)  # same seed, same numbers
    assert again.loss_curve == straight.loss_curve and torch.equal(model_c.weight, model_a.weight)


def test_parameter_groups_train_at_their_lr_scale_of_the_scheduled_rate(tmp_path):
    """DMD2's two learning rates in one optimizer: each group's rate is ``lr_scale`` times the
    loop's (warmed-up) rate at every step."""
    from ops.training.loop import LoopSettings, train_loop

    accelerator = create_accelerator("no")
    fast, slow = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(
        [{"params": fast.parameters(), "lr_scale": 5.0}, {"params": slow.parameters()}], lr=0.0
    )
    seen: list[float] = []

    def loss_fn(batch):
        seen.extend(group["lr"] for group in optimizer.param_groups)
        x = torch.ones(1, 2)
        return (fast(x) + slow(x)).sum()

    settings = LoopSettings(steps=3, checkpoint_every=0, learning_rate=0.1, warmup_steps=2)
    train_loop(accelerator, fast, optimizer, loss_fn, GlobalBatchPlan(4, 2, seed=0), settings,
               CheckpointStore(tmp_path, "toy"))  # fmt: skip
    assert seen == pytest.approx([0.25, 0.05, 0.5, 0.1, 0.5, 0.1])


def test_exclusive_lock_serialises_two_processes(tmp_path):
    """The second process enters only after the first has left (the synthetic-set cache that
    utility and privacy_audit fill side by side)."""
    import subprocess
    import sys

    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from ops.training.locks import exclusive_lock\n"
        "log = Path(sys.argv[1])\n"
        "with exclusive_lock(log.with_suffix('.lock')):\n"
        "    with open(log, 'a') as f: f.write('in ')\n"
        "    time.sleep(0.5)\n"
        "    with open(log, 'a') as f: f.write('out ')\n"
    )
    log = tmp_path / "log.txt"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(log)]) for _ in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert log.read_text().split() == ["in", "out", "in", "out"]
