"""The arena planner of the C bundle: blocks with sizes and lifetimes in, byte offsets in one static buffer out.

A block is live from the step that writes it to the last step that reads it, both included; two blocks whose
lifetimes meet never share a byte. Blocks are placed in order of their first step (ties: the order given; the bundle
gives each call's output before its scratch buffers), each at the lowest ``align``-aligned offset where it fits
between the blocks still live (first fit). A block's size is rounded up to ``align`` and is at least ``align``
(a zero-size tensor still gets an address of its own). Pure: no I/O, no TVM.
"""
from __future__ import annotations

from dataclasses import dataclass

ALIGN = 16


@dataclass(frozen=True)
class Block:
    nbytes: int
    first: int  # the step that writes it
    last: int  # the last step that reads it (>= first)


@dataclass(frozen=True)
class ArenaPlan:
    offsets: list  # per block, in the order given
    size: int  # bytes of the arena: the end of the highest block


def aligned(nbytes: int, align: int = ALIGN) -> int:
    """``nbytes`` rounded up to a multiple of ``align``, at least ``align``."""
    return (max(int(nbytes), 1) + align - 1) // align * align


def plan_arena(blocks: list, align: int = ALIGN) -> ArenaPlan:
    """First-fit offsets for ``blocks`` (see the module docstring)."""
    order = sorted(range(len(blocks)), key=lambda i: blocks[i].first)  # stable: ties keep the order given
    offsets = [0] * len(blocks)
    placed = []  # (offset, aligned size, block)
    size = 0
    for i in order:
        block = blocks[i]
        if block.last < block.first:
            raise ValueError(f"block {i}: last step {block.last} before first step {block.first}")
        need = aligned(block.nbytes, align)
        offset = 0
        for off, sz, other in sorted(placed, key=lambda t: t[0]):
            if other.last < block.first or block.last < other.first:
                continue  # not live at the same time
            if off - offset >= need:
                break
            offset = max(offset, off + sz)
        offsets[i] = offset
        placed.append((offset, need, block))
        size = max(size, offset + need)
    return ArenaPlan(offsets, size)


def no_reuse_size(blocks: list, align: int = ALIGN) -> int:
    """The arena without reuse: every block side by side."""
    return sum(aligned(b.nbytes, align) for b in blocks)
