"""camkit.core.distributed: launcher discovery, sharding, and 2 CPU processes (gloo, loopback)
started by torchrun and by accelerate launch for `camkit train` and a sharded `camkit cam`."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camkit.core.distributed import (DEFAULT_TIMEOUT, Launch, block, gather, group_timeout, launch, main_first, on_main,
                                     process_group)
from camkit.data.folders import TensorBatches, load_folder
from camkit.errors import CamkitError
from camkit.train.run import load
from helpers import free_port

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- one process

def test_launch_reads_the_launchers_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = launch()
    assert info == Launch(1, 2, 1) and info.active and not info.main


def test_launch_without_a_launcher_is_rank_0_of_1(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert launch() == Launch(0, 1, 0) and launch().main and not launch().active


@pytest.mark.parametrize("env, message", [({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
                                          ({"WORLD_SIZE": "2", "RANK": "2"}, "need 0 <= RANK < WORLD_SIZE")])
def test_a_malformed_launcher_environment_is_one_clear_error(monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(CamkitError, match=message):
        launch()


def test_a_group_without_its_rendezvous_address_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(CamkitError, match="start camkit with torchrun or accelerate launch"):
        with process_group("cpu"):
            pass


def test_the_group_timeout_is_torchs_default_unless_set(monkeypatch):
    monkeypatch.delenv("CAMKIT_DDP_TIMEOUT", raising=False)
    assert group_timeout().total_seconds() == DEFAULT_TIMEOUT == 1800
    monkeypatch.setenv("CAMKIT_DDP_TIMEOUT", "90")
    assert group_timeout().total_seconds() == 90 and group_timeout(2.5).total_seconds() == 2.5  # the option wins


@pytest.mark.parametrize("env, option, message", [
    ("soon", None, "CAMKIT_DDP_TIMEOUT='soon' is not a number of seconds"),
    ("0", None, "CAMKIT_DDP_TIMEOUT='0' must be a positive number of seconds, not 0.0"),
    ("nan", None, "must be a positive number of seconds, not nan"),
    (None, -1, "--ddp-timeout must be a positive number of seconds, not -1"),
    (None, float("inf"), "--ddp-timeout must be a positive number of seconds, not inf")])
def test_a_wrong_group_timeout_is_one_clear_error(monkeypatch, env, option, message):
    if env is None:
        monkeypatch.delenv("CAMKIT_DDP_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("CAMKIT_DDP_TIMEOUT", env)
    with pytest.raises(CamkitError, match=message):
        group_timeout(option)


@pytest.mark.parametrize("value, message", [("0", "--ddp-timeout must be a positive number of seconds, not 0.0"),
                                            ("soon", "Invalid value for '--ddp-timeout'")])
def test_train_refuses_a_wrong_ddp_timeout_before_any_work(cli, tmp_path, value, message):
    """Checked even in one process, before the data folder (which does not exist here) is read."""
    code, _, err = cli("train", tmp_path / "no-data", "--ddp-timeout", value)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("n", [0, 1, 5, 80])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_blocks_cover_the_input_in_order(n, world):
    parts = [block(n, r, world) for r in range(world)]
    assert [i for p in parts for i in p] == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_helpers_in_one_process_do_what_one_process_would():
    assert gather([3, 1, 2]) == [3, 1, 2]
    assert on_main(lambda: "written") == "written" and main_first(lambda: 7) == 7
    with pytest.raises(CamkitError, match="bad"):
        on_main(lambda: (_ for _ in ()).throw(CamkitError("bad")))


def test_ranks_draw_disjoint_equal_shards_of_one_permutation():
    images, labels = torch.zeros(21, 3, 4, 4, dtype=torch.uint8), torch.arange(21)
    seen = []
    for rank in (0, 1):
        dl = TensorBatches(images, labels, bs=4, shuffle=True, seed=5, rank=rank, world=2)
        seen.append(torch.cat([y for _, y in dl]).tolist())
        assert len(dl) == 2  # 21 // 2 = 10 items each, two full batches of 4
    assert len(seen[0]) == len(seen[1]) == 8 and not set(seen[0]) & set(seen[1])


# ---------------------------------------------------------------- two processes

def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "CAMKIT_DEBUG")}
    env.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    return env


def _launch(launcher: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node 2` or `accelerate launch --multi_gpu
    --num_processes 2` (torch's elastic launcher underneath; on a machine without GPUs camkit
    picks the CPU and gloo) running ARGS, on the loopback interface."""
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port())]
    return subprocess.run([*cmd, *map(str, args)], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _sides(root: Path, n: int = 40) -> Path:
    """A bright block on the left or on the right of a noisy 32-px canvas: learnt in 2 epochs."""
    rng = np.random.default_rng(0)
    for cls in ("left", "right"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            a = rng.normal(90, 25, (32, 32, 3)).clip(0, 255)
            y, x = rng.integers(0, 22), rng.integers(0, 6) + (0 if cls == "left" else 20)
            a[y:y + 10, x:x + 6] = 230
            Image.fromarray(a.astype(np.uint8)).save(root / cls / f"{i:03d}.png")
    return root


TRAIN = ["--arch", "resnet18", "--epochs", "2", "--size", "32", "--bs", "8", "--no-pretrained",
         "--aug", "none", "--precision", "fp32"]

SPY = textwrap.dedent('''
    """camkit's CLI, with every rank's final weights digested into DIGESTS/rankN.sha."""
    import hashlib, os, sys
    from pathlib import Path
    import camkit.train.loop as T

    original, digests = T.run_contents, Path(sys.argv[1])

    def spy(result, spec, model, *args, **kwargs):
        h = hashlib.sha256()
        for name, t in sorted(model.state_dict().items()):
            h.update(name.encode() + t.detach().float().cpu().contiguous().numpy().tobytes())
        (digests / f"rank{os.environ['RANK']}.sha").write_text(h.hexdigest())
        return original(result, spec, model, *args, **kwargs)

    T.run_contents = spy
    from camkit.cli import main
    sys.argv = ["camkit", *sys.argv[2:]]
    main()
''')


@pytest.fixture(scope="module")
def sides(tmp_path_factory) -> Path:
    return _sides(tmp_path_factory.mktemp("sides") / "data")


def test_torchrun_trains_one_run_with_identical_weights_on_every_rank(sides, tmp_path):
    from camkit.train.loop import train

    single = train(sides, out=tmp_path / "single", quiet=True, arch="resnet18", epochs=2, size=32, bs=8,
                   pretrained=False, aug="none", precision="fp32")
    (tmp_path / "spy.py").write_text(SPY)
    (tmp_path / "digests").mkdir()
    done = _launch("torchrun", tmp_path / "spy.py", tmp_path / "digests", "train", sides, *TRAIN,
                   "--out", tmp_path / "ddp", "--cache", tmp_path / "cache")
    assert done.returncode == 0, done.stderr[-3000:]
    digests = [(tmp_path / "digests" / f"rank{r}.sha").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]                                   # all-reduced: one model
    meta = json.loads((tmp_path / "ddp" / "model.json").read_text())
    assert meta["world_size"] == 2 and meta["complete"] is True and meta["summary"]["world_size"] == 2
    assert load(tmp_path / "ddp").classes == ["left", "right"]
    assert not list((tmp_path / "ddp").glob("*.u8"))                   # the cache lives in --cache only
    assert load_folder(sides, 32, cache=tmp_path / "cache").decoded == 0  # built once, by rank 0
    assert done.stdout.count("valid accuracy") == 1, done.stdout                      # reported once
    assert done.stderr.count("epoch 2/2") == 1, done.stderr[-2000:]                   # progress once
    two = meta["summary"]["valid_accuracy"]
    assert single.valid_accuracy >= 0.9, single.history
    assert abs(two - single.valid_accuracy) <= 0.125, (single.valid_accuracy, two)     # 2 of 16 images


def test_accelerate_launch_trains_a_run_written_once(sides, tmp_path):
    done = _launch("accelerate", "-m", "camkit", "train", sides, *TRAIN, "--out", tmp_path / "run", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)                                   # one JSON document: rank 0's
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert result["world_size"] == meta["world_size"] == 2 and result["valid_accuracy"] >= 0.75
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".camkit")]


@pytest.fixture(scope="module")
def single_cams(tiny_run, canvas_dir, tmp_path_factory) -> Path:
    """`cam` of both class folders in this one process, made once for both launchers."""
    from camkit.explain import cam

    out = tmp_path_factory.mktemp("single-cams") / "one"
    cam([canvas_dir / "bag", canvas_dir / "trouser"], model=tiny_run, out=out, bs=8, quiet=True)
    return out


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_sharded_cam_equals_the_single_process_folder(tiny_run, canvas_dir, single_cams, tmp_path, launcher):
    images = [canvas_dir / "bag", canvas_dir / "trouser"]
    done = _launch(launcher, "-m", "camkit", "cam", *images, "-m", tiny_run, "--out", tmp_path / "two", "--bs", "8")
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (single_cams / "cams.jsonl").read_text(), (tmp_path / "two" / "cams.jsonl").read_text()
    assert one.splitlines() == two.splitlines() and len(one.splitlines()) == 80
    assert (single_cams / "index.html").read_text() == (tmp_path / "two" / "index.html").read_text()
    for line in one.splitlines()[::13]:  # float sums in another thread count: equal to rounding
        name = json.loads(line)["map"]
        assert np.allclose(np.load(single_cams / name), np.load(tmp_path / "two" / name), atol=1e-5)
    assert done.stdout.count("images explained") == 1


def test_a_rank_0_error_is_one_line_on_every_rank_and_nothing_hangs(tiny_run, canvas_dir, tmp_path):
    (tmp_path / "out").write_text("a file, not a folder")
    done = _launch("torchrun", "-m", "camkit", "cam", canvas_dir / "bag", "-m", tiny_run,
                   "--out", tmp_path / "out", timeout=120)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and all("is a file, not a folder" in e for e in errors)  # rank 0's, on both ranks
    assert (tmp_path / "out").read_text() == "a file, not a folder"


PEER = textwrap.dedent('''
    """`camkit train DATA --ddp-timeout 2` as rank RANK of 2, with camkit.train.loop's work replaced
    (and fastai not imported): both ranks meet once, then rank 1 sleeps (a frozen peer) or
    exits (a dead one) while rank 0 waits for it in a barrier."""
    import os, sys, time, types
    import torch.distributed as dist

    MODE = sys.argv[1]

    def work(*args, **kwargs):
        dist.barrier()
        if os.environ["RANK"] == "1":
            if MODE == "dies":
                os._exit(3)
            time.sleep(8)
        dist.barrier()

    sys.modules["camkit.train.loop"] = types.SimpleNamespace(train=work)
    import camkit.core.device, camkit.core.distributed  # noqa: E401  (what the command imports, before the start line)
    from camkit.cli import main
    open(f"ready{os.environ['RANK']}", "w").close()  # start the group together: a rank still
    while not all(os.path.exists(f"ready{r}") for r in (0, 1)):  # importing is not a frozen one
        time.sleep(0.05)
    sys.argv = ["camkit", "train", "DATA", "--ddp-timeout", "2"]
    main()
''')


@pytest.mark.parametrize("peer, rank_0_says", [("sleeps", "peer rank 1 did not answer within 2 s"),
                                               ("dies", "peer rank 1 stopped")])
def test_a_silent_or_dead_peer_ends_the_other_rank_with_one_line(tmp_path, peer, rank_0_says):
    """Two real processes in a gloo group on 127.0.0.1, as torchrun would start them (but with
    no launcher to stop the survivor): rank 0 stops after --ddp-timeout, or as soon as its
    peer is gone, with one line and exit 2 instead of a backend traceback."""
    (tmp_path / "peer.py").write_text(PEER)
    env = {**_env(), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    procs = [subprocess.Popen([sys.executable, tmp_path / "peer.py", peer], cwd=tmp_path, text=True,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stderr=subprocess.PIPE)
             for r in (0, 1)]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    said = [[line for line in err.splitlines() if line.startswith("error:")] for err in errs]
    assert procs[0].returncode == 2 and len(said[0]) == 1 and "Traceback" not in errs[0], errs[0][-2000:]
    assert rank_0_says in said[0][0]
    if peer == "sleeps":  # the line says how to wait longer; the sleeper wakes to a group its peer has left
        assert "--ddp-timeout SECONDS or CAMKIT_DDP_TIMEOUT" in said[0][0]
        assert procs[1].returncode == 2 and said[1] == [said[1][0]] and "peer rank 0 stopped" in said[1][0], errs[1]


def test_runs_written_before_world_size_read_as_one_process(tiny_run, tmp_path):
    from camkit.train.run import RunInfo

    meta = json.loads((tiny_run / "model.json").read_text())
    meta.pop("world_size", None)
    assert RunInfo.from_json(meta, tmp_path / "model.json").world_size == 1
    with pytest.raises(CamkitError, match="world_size"):
        RunInfo.from_json({**meta, "world_size": 0}, tmp_path / "model.json")


def test_clean_apply_refuses_to_run_under_a_launcher(tiny_run, cli, monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code, out, err = cli("clean", tiny_run, "--undo")
    assert code == 2 and "run them in one process" in err


def _predicted(run, data) -> list[str]:
    from camkit.predict import predict

    return [p.image for p in predict(data, run)]


def _ranked(run, data) -> list[str]:
    from camkit.clean import rank

    return sorted(str(s.image.resolve()) for s in rank(run))


@pytest.mark.parametrize("module, scored, ordered", [("camkit.predict", _predicted, True),
                                                     ("camkit.clean", _ranked, False)])
def test_the_ranks_blocks_together_score_every_image_once(tiny_run, canvas_dir, monkeypatch, module, scored,
                                                          ordered):
    """Each rank's block, run as that rank would (shard -> its block; gather -> identity), put
    together in rank order, is the single-process result (clean sorts by score: compared as sets)."""
    import importlib

    mod = importlib.import_module(module)
    whole = scored(tiny_run, canvas_dir)
    parts = []
    for rank in (0, 1):
        monkeypatch.setattr(mod, "shard", lambda n, rank=rank: block(n, rank, 2))
        parts.append(scored(tiny_run, canvas_dir))
    together = parts[0] + parts[1]
    assert (together if ordered else sorted(together)) == whole and len(parts[0]) == len(parts[1]) == 40
