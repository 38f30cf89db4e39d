"""Two-process DDP (gloo, CPU, loopback) with torchext modules and optimizer equals single-process
training on the combined batch."""
import os
import sys

import pytest
import torch
import torch.distributed as dist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))

import ddp_train  # noqa: E402


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
def test_two_process_gloo_matches_single_process(tmp_path):
    steps = 20
    distributed = ddp_train.run_distributed("gloo", 2, steps, out_path=str(tmp_path / "ddp.pt"))
    single = ddp_train.run_single("cpu", steps)
    assert set(distributed) == set(single)
    start = ddp_train.make("cpu")[0].state_dict()
    for key in single:
        assert not torch.equal(single[key], start[key])  # training moved the weights
        torch.testing.assert_close(distributed[key], single[key], rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(torch.cuda.device_count() < 2 or not dist.is_nccl_available(), reason="needs 2 GPUs and NCCL")
def test_two_process_nccl_matches_single_process(tmp_path):
    steps = 20
    distributed = ddp_train.run_distributed("nccl", 2, steps, out_path=str(tmp_path / "ddp.pt"))
    single = ddp_train.run_single("cuda", steps)
    for key in single:
        torch.testing.assert_close(distributed[key], single[key], rtol=1e-4, atol=1e-5)
