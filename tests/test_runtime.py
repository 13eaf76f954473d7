"""Ports for the servers pstyle starts: free, and outside what the kernel hands to anyone else."""

import socket

from pstyle.distributed.runtime import RAY_WORKER_PORTS_END, ephemeral_ports, free_port


def test_free_ports_avoid_the_ephemeral_range_and_rays_worker_ports():
    low, high = ephemeral_ports()
    assert 0 < low <= high
    ports = {free_port() for _ in range(20)}
    assert all(RAY_WORKER_PORTS_END <= p < low for p in ports)
    assert len(ports) > 1  # drawn at random: two processes asking at once rarely collide
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports.pop()))  # and it really is free
