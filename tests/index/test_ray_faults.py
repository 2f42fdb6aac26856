"""Ray under faults: a bad address, a cluster too small, nodes lost mid-job, resuming after.

The connection tests run the CLI in a subprocess with a hard timeout. The cluster tests share
one ``ray.cluster_utils.Cluster`` (a head without CPUs, so that every actor runs on a worker
node the test can remove, and two workers of one CPU) and each runs under ``signal.alarm``:
a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clipsearch import ClusterUnavailableError, ImageIndex
from clipsearch.cli.main import main
from clipsearch.index.raycluster import RayOptions
from clipsearch.progress import Progress
from tests.helpers import ray_without_auth

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TEST_S = 300  # the hard bound of each cluster test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(args: list[str], tmp_path: Path, env: dict[str, str] | None = None, **kw):
    """The CLI in a fresh process, bounded: (returncode, stderr lines)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("RAY_ADDRESS", None)
    argv = [
        sys.executable,
        "-c",
        "from clipsearch.cli.main import run; run()",
        "--index",
        str(tmp_path / "idx"),
        *args,
    ]
    proc = subprocess.Popen(argv, env=full_env, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    return proc


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, list[str]]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"the command did not end within {timeout} s")
    return proc.returncode, err.strip().splitlines()


def ray_index(tmp_path, photo_dir, tiny_model, *options: str, env=None) -> list[str]:
    return ["index", str(photo_dir), "--model", tiny_model, "--executor", "ray", *options]


def test_nothing_listening_is_one_line(tmp_path, photo_dir, tiny_model):
    port = free_port()
    args = ray_index(tmp_path, photo_dir, tiny_model, "--ray-address", f"127.0.0.1:{port}")
    code, err = finish(cli([*args, "--ray-timeout", "5"], tmp_path))
    assert code == 1
    assert len(err) == 1, err
    assert err[0].startswith(f"clipsearch: error: cannot reach the Ray cluster at 127.0.0.1:{port}")
    assert "ray start --head" in err[0]
    assert not (tmp_path / "idx").exists()


def test_ray_client_address_that_does_not_answer_is_one_line(tmp_path, photo_dir, tiny_model):
    """ray:// is offered: the extra installs Ray Client, so the address is tried, bounded."""
    pytest.importorskip("grpc", reason="the ray extra installs ray[client]")
    port = free_port()
    address = f"ray://127.0.0.1:{port}"
    args = ray_index(tmp_path, photo_dir, tiny_model, "--ray-address", address)
    code, err = finish(cli([*args, "--ray-timeout", "5"], tmp_path))
    assert code == 1
    assert err == [err[0]] and err[0].startswith(
        f"clipsearch: error: cannot reach the Ray cluster at {address} (127.0.0.1:{port})"
    )
    assert not (tmp_path / "idx").exists()


@pytest.fixture
def silent_listener():
    """A port where something accepts connections and never says a word."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s


def test_an_address_that_never_answers_times_out_in_one_line(
    tmp_path, photo_dir, tiny_model, silent_listener
):
    address = f"127.0.0.1:{silent_listener.getsockname()[1]}"
    args = ray_index(tmp_path, photo_dir, tiny_model, "--ray-address", address)
    code, err = finish(cli([*args, "--ray-timeout", "3"], tmp_path))
    assert code == 1
    ours = [line for line in err if line.startswith("clipsearch:")]
    assert ours == [
        f"clipsearch: error: the Ray cluster at {address} did not answer within 3 s; check "
        "that it is a Ray head (`ray status` there) or raise --ray-timeout"
    ], err
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "idx").exists()


def test_ctrl_c_while_connecting_ends_the_command(tmp_path, photo_dir, tiny_model, silent_listener):
    address = f"127.0.0.1:{silent_listener.getsockname()[1]}"
    args = ray_index(tmp_path, photo_dir, tiny_model, "--ray-address", address)
    proc = cli([*args, "--ray-timeout", "600"], tmp_path)
    silent_listener.settimeout(120)
    conn, _ = silent_listener.accept()  # the command is connecting now
    conn.close()
    proc.send_signal(signal.SIGINT)
    code, err = finish(proc, timeout=60)
    assert code == 130
    assert err[-1].startswith("clipsearch: interrupted"), err
    assert not (tmp_path / "idx").exists()


def test_a_cluster_that_wants_a_token_says_where_to_get_it(
    tmp_path, photo_dir, tiny_model, silent_listener
):
    """With token authentication on (as Ray 2.60 turns it on for clusters it starts) and no
    token on this machine, Ray refuses before it connects; the line names the fix."""
    address = f"127.0.0.1:{silent_listener.getsockname()[1]}"
    args = ray_index(tmp_path, photo_dir, tiny_model, "--ray-address", address)
    code, err = finish(cli([*args, "--ray-timeout", "5"], tmp_path, {"RAY_AUTH_MODE": "token"}))
    assert code == 1
    ours = [line for line in err if line.startswith("clipsearch:")]
    assert ours == [
        f"clipsearch: error: the Ray cluster at {address} uses Ray token authentication and "
        "needs a token, and none was found here: copy ~/.ray/auth_token from its head node to "
        "this machine, or set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH)"
    ], err
    assert not (tmp_path / "idx").exists()


@pytest.fixture
def ray_tmp():
    """A RAY_TMPDIR of its own, short (Ray's socket paths below it must fit in 107 bytes,
    which pytest's tmp_path does not leave room for), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="cs-ray-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_auto_finds_a_stopped_cluster_and_says_so(tmp_path, photo_dir, tiny_model, ray_tmp):
    """`ray start` leaves the cluster's address behind; once it is stopped, `auto` finds it
    and nothing answers there."""
    port = free_port()
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{port}")
    args = ray_index(tmp_path, photo_dir, tiny_model, "--ray-address", "auto")
    code, err = finish(cli([*args, "--ray-timeout", "5"], tmp_path, {"RAY_TMPDIR": str(ray_tmp)}))
    assert code == 1
    assert len(err) == 1, err
    assert err[0].startswith("clipsearch: error: cannot reach the Ray cluster at auto (")
    assert not (tmp_path / "idx").exists()


def test_auto_without_a_cluster_is_one_line(tmp_path, photo_dir, tiny_model, ray_tmp):
    from ray._private.services import find_gcs_addresses

    if find_gcs_addresses():
        pytest.skip("another Ray instance runs on this machine: `auto` would find it")
    args = ray_index(tmp_path, photo_dir, tiny_model, "--ray-address", "auto")
    env = {"RAY_TMPDIR": str(ray_tmp)}
    code, err = finish(cli([*args, "--ray-timeout", "5"], tmp_path, env))
    assert code == 1
    assert err == [
        "clipsearch: error: --ray-address auto: no running Ray cluster found on this machine; "
        "start one with `ray start --head`, or give the head's address (HOST:6379)"
    ]
    assert not (tmp_path / "idx").exists()


# -- on a cluster ----------------------------------------------------------------------------


class Nodes:
    """The module's cluster and its current worker nodes."""

    def __init__(self, cluster, client_port: int):
        self.cluster = cluster
        self.client_port = client_port
        self.workers = [cluster.add_node(num_cpus=1) for _ in range(2)]

    def remove(self, node) -> None:
        self.cluster.remove_node(node)
        self.workers.remove(node)

    def refill(self) -> None:
        while len(self.workers) < 2:
            self.workers.append(self.cluster.add_node(num_cpus=1))
        self.cluster.wait_for_nodes()


@pytest.fixture(scope="module")
def nodes():
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    # Its own temp dir: the cluster's address file must not lead other Ray users here.
    old = os.environ.get("RAY_TMPDIR")
    ray_dir = tempfile.mkdtemp(prefix="cs-ray-")  # short: see ray_tmp
    os.environ["RAY_TMPDIR"] = ray_dir
    client_port = free_port()
    head = {"num_cpus": 0, "include_dashboard": False, "ray_client_server_port": client_port}
    with ray_without_auth():
        cluster = Cluster(initialize_head=True, connect=True, head_node_args=head)
        try:
            yield Nodes(cluster, client_port)
        finally:
            ray.shutdown()
            cluster.shutdown()
            shutil.rmtree(ray_dir, ignore_errors=True)
        if old is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old


@pytest.fixture
def bounded(nodes):
    """Fail the test after TEST_S seconds instead of hanging; leave two workers behind."""

    def expire(signum, frame):
        raise TimeoutError(f"the test did not end within {TEST_S} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TEST_S)
    try:
        yield nodes
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        nodes.refill()


class OnFirstCommit(Progress):
    """Runs ``action`` once, when the first shard has been committed."""

    def __init__(self, action):
        self.action = action
        self.commits = 0

    def advance(self, n: int) -> None:
        self.commits += 1
        if self.commits == 1:
            self.action()


def vectors_by_path(index: ImageIndex) -> dict[str, np.ndarray]:
    records = index.catalog.images(index.catalog.ids().tolist())
    return {r.path: index.catalog.vector(i) for i, r in records.items()}


@pytest.fixture
def local_vectors(tmp_path, tiny_model, photo_dir):
    with ImageIndex.open_or_create(tmp_path / "local", model=tiny_model) as local:
        assert local.add([photo_dir]).added == 12
        return vectors_by_path(local)


def assert_same_index(index: ImageIndex, want: dict[str, np.ndarray]) -> None:
    """Every path once, and the local executor's vectors."""
    got = vectors_by_path(index)
    assert sorted(got) == sorted(want)
    assert sorted(index.catalog.ids().tolist()) == sorted(index.vectors.ids().tolist())
    assert len(index.catalog.ids()) == len(want)
    for path, vec in want.items():
        assert np.allclose(got[path], vec, atol=1e-5), path


def test_a_ray_client_address_runs_the_job(bounded, tmp_path, tiny_model, photo_dir, local_vectors):
    """The ray extra installs Ray Client: a ray:// address works from another process."""
    address = f"ray://127.0.0.1:{bounded.client_port}"
    args = ray_index(tmp_path, photo_dir, tiny_model, "--ray-address", address)
    code, err = finish(cli([*args, "--precision", "fp32"], tmp_path))
    assert code == 0, err
    with ImageIndex.open(tmp_path / "idx") as index:
        assert_same_index(index, local_vectors)


def test_a_node_lost_mid_job_hands_its_shard_to_another(
    bounded, tmp_path, tiny_model, photo_dir, local_vectors, caplog
):
    caplog.set_level(logging.WARNING, logger="clipsearch")
    lost = bounded.workers[0]
    hook = OnFirstCommit(lambda: bounded.remove(lost))
    options = RayOptions(actors=2, shard_size=2, timeout=60)
    with ImageIndex.open_or_create(tmp_path / "ray", model=tiny_model) as index:
        report = index.add([photo_dir], executor=options, progress=hook)
        assert (report.added, report.failed) == (12, 0)
        assert_same_index(index, local_vectors)
    warnings = [
        r.getMessage() for r in caplog.records if "lost the encoder actor" in r.getMessage()
    ]
    assert warnings and lost.node_id[:8] in warnings[0], caplog.text


def test_more_actors_than_the_nodes_hold_are_clamped(
    bounded, tmp_path, tiny_model, photo_dir, local_vectors, caplog
):
    caplog.set_level(logging.WARNING, logger="clipsearch")
    with ImageIndex.open_or_create(tmp_path / "ray", model=tiny_model) as index:
        report = index.add([photo_dir], executor=RayOptions(actors=3, shard_size=3, timeout=60))
        assert report.added == 12
        assert_same_index(index, local_vectors)
    assert (
        "ray: 3 encoder actors asked for, but the 3 live nodes have room for 2 (1 CPU each); "
        "running 2"
    ) in caplog.text


@pytest.mark.parametrize(
    ("option", "need"), [("--ray-cpus", "2 CPU"), ("--ray-gpus", "1 CPU and 1 GPU")]
)
def test_an_actor_no_node_can_hold_is_refused(
    bounded, tmp_path, tiny_model, photo_dir, option, need
):
    args = ["--index", str(tmp_path / "i"), "index", str(photo_dir), "--model", tiny_model]
    value = "2" if option == "--ray-cpus" else "1"
    result = CliRunner().invoke(main, [*args, "--executor", "ray", option, value])
    assert result.exit_code == 1, result.output
    assert result.output.strip() == (
        f"clipsearch: error: ray: no node has room for one encoder actor of {need}: the "
        "largest of the 3 live nodes has 1 CPU and 0 GPU; lower --ray-cpus or --ray-gpus, or "
        "add a node that has them"
    )
    assert not (tmp_path / "i").exists()


def test_with_every_node_lost_the_run_stops_and_a_rerun_resumes(
    bounded, tmp_path, tiny_model, photo_dir, local_vectors
):
    lost = list(bounded.workers)

    def lose_all() -> None:
        for node in lost:
            bounded.remove(node)

    options = RayOptions(actors=2, shard_size=2, timeout=5)
    with ImageIndex.open_or_create(tmp_path / "ray", model=tiny_model) as index:
        with pytest.raises(ClusterUnavailableError) as failed:
            index.add([photo_dir], executor=options, progress=OnFirstCommit(lose_all))
        committed = len(index.catalog.ids())
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith("ray: no encoder actor can run (lost node(s) ")
    assert all(node.node_id[:8] in message for node in lost), message
    assert message.endswith("what was committed is kept: run the same command again to resume")
    assert 2 <= committed < 12

    # The nodes are back; the rerun asks for more actors than fit, and still completes.
    bounded.refill()
    args = ["--index", str(tmp_path / "ray"), "index", str(photo_dir), "--json"]
    args += ["--precision", "fp32"]  # as the library's default, which made the local vectors
    result = CliRunner().invoke(main, [*args, "--executor", "ray", "--ray-actors", "3"])
    assert result.exit_code == 0, result.output
    assert f'"added": {12 - committed}' in result.output
    assert f'"unchanged": {committed}' in result.output
    with ImageIndex.open(tmp_path / "ray") as index:
        assert_same_index(index, local_vectors)
