"""The bundle's arena planner on its own (tvm_bnn.deploy.arena): no two live blocks share a byte, offsets are
aligned, memory is reused once a block is dead, and small cases reach the known optimum."""
import numpy as np
import pytest

from tvm_bnn.deploy.arena import ALIGN, Block, aligned, no_reuse_size, plan_arena


def overlapping_live_pairs(blocks, plan, align=ALIGN):
    bad = []
    for i, a in enumerate(blocks):
        for j in range(i + 1, len(blocks)):
            b = blocks[j]
            live_together = a.first <= b.last and b.first <= a.last
            oa, ob = plan.offsets[i], plan.offsets[j]
            share_bytes = oa < ob + aligned(b.nbytes, align) and ob < oa + aligned(a.nbytes, align)
            if live_together and share_bytes:
                bad.append((i, j))
    return bad


def peak_live(blocks, align=ALIGN):
    """A lower bound of any plan: the most bytes live at one step."""
    steps = {s for b in blocks for s in (b.first, b.last)}
    return max((sum(aligned(b.nbytes, align) for b in blocks if b.first <= s <= b.last) for s in steps), default=0)


def test_empty():
    plan = plan_arena([])
    assert plan.offsets == [] and plan.size == 0


def test_alignment_and_sizes():
    blocks = [Block(1, 0, 0), Block(0, 0, 1), Block(17, 1, 1), Block(33, 1, 2)]
    plan = plan_arena(blocks)
    assert all(off % ALIGN == 0 for off in plan.offsets)
    assert aligned(0) == aligned(1) == 16 and aligned(16) == 16 and aligned(17) == 32
    assert all(off + aligned(b.nbytes) <= plan.size for off, b in zip(plan.offsets, blocks))
    assert plan_arena([Block(5, 0, 0)], align=64).size == 64
    assert not overlapping_live_pairs(blocks, plan)


def test_dead_blocks_are_reused():
    """A chain of calls, each reading only the previous output: two buffers suffice however long the chain."""
    blocks = [Block(1000, i, i + 1) for i in range(10)]
    plan = plan_arena(blocks)
    assert plan.size == 2 * aligned(1000) < no_reuse_size(blocks) == 10 * aligned(1000)
    assert plan.offsets[0] == plan.offsets[2] == plan.offsets[4]


def test_a_block_written_by_a_call_is_not_placed_over_that_calls_inputs():
    # step 1 reads A (last=1) and writes B (first=1): both live at step 1
    plan = plan_arena([Block(64, 0, 1), Block(64, 1, 2)])
    assert plan.offsets == [0, 64] and plan.size == 128


def test_known_optimum():
    """A at steps 0-1, B 1-2, C 2-3, D 3-3 (scratch of step 3): the peak is A+B = 48 (or C+B, C+D), and first fit
    reaches it by putting C where A was and D where B was."""
    blocks = [Block(32, 0, 1), Block(16, 1, 2), Block(32, 2, 3), Block(16, 3, 3)]
    plan = plan_arena(blocks)
    assert plan.offsets == [0, 32, 0, 32]
    assert plan.size == peak_live(blocks) == 48


def test_order_given_breaks_ties():
    """Two blocks written by the same step: the one given first goes lower (the bundle lists a call's output
    before its scratch buffers)."""
    assert plan_arena([Block(16, 0, 0), Block(48, 0, 0)]).offsets == [0, 16]
    assert plan_arena([Block(48, 0, 0), Block(16, 0, 0)]).offsets == [0, 48]


def test_blocks_are_placed_by_first_step_whatever_the_order_given():
    blocks = [Block(32, 2, 3), Block(32, 0, 1), Block(16, 1, 2)]
    plan = plan_arena(blocks)
    assert plan.offsets == [0, 0, 32] and plan.size == 48


def test_gap_between_live_blocks_is_filled():
    # X at 0, Y at 32, Z at 48 all live; X dies; W (16 bytes) fits into X's place below Y
    blocks = [Block(32, 0, 0), Block(16, 0, 2), Block(16, 0, 2), Block(16, 1, 2)]
    plan = plan_arena(blocks)
    assert plan.offsets == [0, 32, 48, 0] and plan.size == 64


def test_invalid_lifetime():
    with pytest.raises(ValueError, match="before first"):
        plan_arena([Block(16, 3, 2)])


@pytest.mark.parametrize("seed", range(30))
def test_random_plans_never_overlap(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    blocks = []
    for _ in range(n):
        first = int(rng.integers(0, 20))
        blocks.append(Block(int(rng.integers(0, 5000)), first, first + int(rng.integers(0, 6))))
    plan = plan_arena(blocks)
    assert not overlapping_live_pairs(blocks, plan)
    assert all(off % ALIGN == 0 and off + aligned(b.nbytes) <= plan.size for off, b in zip(plan.offsets, blocks))
    assert peak_live(blocks) <= plan.size <= no_reuse_size(blocks)


def test_the_planner_is_pure():
    """Nothing but the standard library: no TVM, no file or process."""
    import ast
    from pathlib import Path

    from tvm_bnn.deploy import arena

    tree = ast.parse(Path(arena.__file__).read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert modules <= {"__future__", "dataclasses"}
