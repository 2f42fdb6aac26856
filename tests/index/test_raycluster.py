"""What fits on a Ray cluster, and connecting within a bound, without starting Ray.

The nodes are written as ``ray.nodes()`` lists them; the cluster tests that run real nodes are
in test_ray_faults.py.
"""

from __future__ import annotations

import logging
import socket

import pytest
from click.testing import CliRunner

from clipsearch import ClusterUnavailableError
from clipsearch.cli.main import main
from clipsearch.index.raycluster import RayOptions, connect, plan_actors


def node(cpus: float, gpus: float = 0.0, alive: bool = True) -> dict:
    resources = {"CPU": cpus, "memory": 1e9}
    if gpus:
        resources["GPU"] = gpus
    return {"NodeID": "n1", "Alive": alive, "Resources": resources}


def test_actors_fit_node_by_node_not_by_the_cluster_total():
    # Two nodes of 1 CPU hold 2 CPUs together, but not one actor of 1.5.
    with pytest.raises(ClusterUnavailableError) as e:
        plan_actors(RayOptions(num_cpus=1.5), 10, [node(1), node(1)])
    assert str(e.value) == (
        "ray: no node has room for one encoder actor of 1.5 CPU: the largest of the 2 live "
        "nodes has 1 CPU and 0 GPU; lower --ray-cpus or --ray-gpus, or add a node that has them"
    )
    assert plan_actors(RayOptions(num_cpus=1.5), 10, [node(3), node(1)]).actors == 2


def test_more_actors_than_fit_are_clamped_with_one_warning(caplog):
    caplog.set_level(logging.WARNING, logger="clipsearch")
    placement = plan_actors(RayOptions(actors=3), 10, [node(1), node(1), node(4, alive=False)])
    assert (placement.actors, placement.room, placement.nodes) == (2, 2, 2)
    assert [r.getMessage() for r in caplog.records] == [
        "ray: 3 encoder actors asked for, but the 2 live nodes have room for 2 (1 CPU each); "
        "running 2"
    ]


def test_the_default_is_the_room_and_never_more_than_the_shards(caplog):
    caplog.set_level(logging.WARNING, logger="clipsearch")
    assert plan_actors(RayOptions(), 10, [node(4), node(2)]).actors == 6
    assert plan_actors(RayOptions(), 3, [node(4), node(2)]).actors == 3
    assert plan_actors(RayOptions(num_cpus=2), 10, [node(5)]).actors == 2
    assert not caplog.records


def test_gpus_count_per_node_and_fractions_share_one():
    gpu_nodes = [node(8, gpus=1), node(8, gpus=2), node(8)]
    assert plan_actors(RayOptions(num_gpus=1), 10, gpu_nodes).actors == 3
    assert plan_actors(RayOptions(num_gpus=0.5), 10, gpu_nodes).actors == 6
    with pytest.raises(ClusterUnavailableError, match="1 CPU and 1 GPU: the largest"):
        plan_actors(RayOptions(num_gpus=1), 10, [node(8)])


def test_without_live_nodes_the_run_is_refused():
    with pytest.raises(ClusterUnavailableError, match="the cluster has no live node"):
        plan_actors(RayOptions(), 10, [node(4, alive=False)])


@pytest.fixture
def ray_not_started():
    """Ray importable and not initialised in this process: connect() has work to do."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process")
    return ray


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nothing_listening_fails_before_ray_is_asked(ray_not_started):
    ray = ray_not_started
    port = free_port()
    with pytest.raises(ClusterUnavailableError) as e:
        connect(RayOptions(address=f"127.0.0.1:{port}", timeout=5))
    assert str(e.value).startswith(
        f"cannot reach the Ray cluster at 127.0.0.1:{port}: Connection refused; check that "
    )
    assert not ray.is_initialized()


def test_a_bad_address_leaves_no_index_folder(ray_not_started, tmp_path, photo_dir):
    address = f"127.0.0.1:{free_port()}"
    args = ["--index", str(tmp_path / "i"), "index", str(photo_dir), "--executor", "ray"]
    result = CliRunner().invoke(main, [*args, "--ray-address", address, "--ray-timeout", "5"])
    assert result.exit_code == 1
    assert result.output.startswith(f"clipsearch: error: cannot reach the Ray cluster at {address}")
    assert result.output.count("\n") == 1
    assert not (tmp_path / "i").exists()


@pytest.mark.parametrize("address", ["head", "head:port", "ray://head"])
def test_an_address_without_a_port_is_named(ray_not_started, address):
    with pytest.raises(ClusterUnavailableError, match="expected HOST:PORT"):
        connect(RayOptions(address=address, timeout=5))


def test_ray_client_without_grpc_says_how_to_install_it(ray_not_started, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "grpc", None)  # import grpc -> ImportError
    with pytest.raises(ClusterUnavailableError) as e:
        connect(RayOptions(address="ray://head:10001", timeout=5))
    assert str(e.value) == (
        "ray://head:10001: ray:// addresses need Ray Client (grpcio): pip install "
        "'clipsearch[ray]' installs it, or connect with --ray-address HOST:6379 on a node of "
        "the cluster"
    )
