"""Evaluation across the workers of a torch.distributed run (issue 26): each worker scores a block
of the episodes and the blocks are gathered in order, so every worker ends with what one process
gets on the same episodes: predictions, per-episode accuracies, mean and CI.  Two Gloo workers,
started once after this process has scored every case of tests/dist_eval_cases.py (forked where
there is no GPU, so they import nothing), score them all again."""
from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

import dist_eval_cases as cases
from conftest import START_METHOD
from metafsl.engine import ranks


def test_two_workers_score_the_episodes_as_one_process(tmp_path):
    """One test for every case: under pytest-xdist a fixture shared by several tests would fork
    the workers once per xdist worker that runs one of them."""
    one = {case: cases.score(case, rng=7) for case in cases.CASES}
    mp.start_processes(cases.worker, args=(2, str(tmp_path)), nprocs=2, join=True, start_method=START_METHOD)
    workers = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for case, ref in one.items():
        n = len(ref["predicted"])
        half = n // 2 + n % 2
        assert not torch.equal(torch.cat([ref["predicted"][half:], ref["predicted"][:half]]), ref["predicted"]), \
            f"{case}: a misordered gather would not show"
        for r, got in enumerate(w[case] for w in workers):
            assert torch.equal(got["predicted"], ref["predicted"]), f"{case}: rank {r}'s predictions"
            assert torch.equal(got["classes"], ref["classes"]), case
            assert got["scores"] == pytest.approx(ref["scores"], abs=1e-6), f"{case}: rank {r}'s scores"
            assert got["scores"]["episodes"] == n, case
        first, second = (w[case]["events"] for w in workers)
        assert first[0] == ("start", n) and first[-1] == ("end",), case
        assert sum(e[1] for e in first if e[0] == "advance") == n, case  # rank 0 shows the global progress
        assert second == [], case  # the others stay silent


def test_shares_cover_the_work_in_order_in_whole_units():
    for n, unit, world in [(7, 1, 2), (7, 2, 2), (3, 16, 2), (10, 3, 4), (0, 1, 3), (5, 1, 8)]:
        blocks = [ranks.share(n, unit, world, r) for r in range(world)]
        assert [i for b in blocks for i in range(n)[b]] == list(range(n))
        sizes = [b.stop - b.start for b in blocks]
        assert all(b.start % unit == 0 for b in blocks if b.stop > b.start)
        assert max(sizes) - min(sizes) <= unit, (n, unit, world, sizes)
    assert ranks.share(7, 2, 2, 0) == slice(0, 4) and ranks.share(7, 2, 2, 1) == slice(4, 7)


def test_one_process_is_the_whole_world():
    part = torch.arange(6).view(3, 2)
    assert (ranks.world(), ranks.rank(), ranks.share(9)) == (1, 0, slice(0, 9))
    assert ranks.gather_in_order(part, 3) is part and ranks.gather("x") == ["x"]
