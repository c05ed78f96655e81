"""Footprints: the bytes each op moves and the byte ranges a program touches per slot."""

from __future__ import annotations

from npud.isa import DType, Program, T, accesses, slot_footprints


def test_embed_reads_only_gathered_rows() -> None:
    """EMBED moves T rows of its table, though its possible read range is the whole table."""
    prog = Program().embed(
        T(0, 0, (3, 16)), T(1, 0, (1000, 16), DType.F16), T(2, 0, (3,), DType.I32)
    )
    table = accesses(prog.instructions[0])[1]
    assert table.bytes_moved == 3 * 16 * 2
    assert (table.start, table.end) == (0, 1000 * 16 * 2)


def test_kv_write_touches_only_its_positions() -> None:
    """KV_WRITE writes positions [start, start+T) of every head."""
    prog = Program().kv_write(T(0, 0, (2, 10, 4)), T(1, 0, (3, 8)), start_pos=5)
    cache = accesses(prog.instructions[0])[0]
    assert cache.write
    assert cache.bytes_moved == 2 * 3 * 4 * 4
    assert (cache.start, cache.end) == (5 * 16, (10 + 8) * 16)


def test_slot_footprints_merge_and_split_reads_from_writes() -> None:
    """Per slot, read and written spans are merged and reported separately."""
    prog = Program()
    prog.add(T(1, 0, (4,)), T(0, 0, (4,)), T(0, 16, (4,)))
    prog.add(T(1, 16, (4,)), T(1, 0, (4,)), T(0, 64, (4,)))
    fp = slot_footprints(prog.instructions)
    assert fp[0].read == ((0, 32), (64, 80))
    assert fp[0].written == ()
    assert fp[1].written == ((0, 32),)
    assert fp[1].read == ((0, 16),)
    assert (fp[0].bytes_read, fp[1].bytes_written) == (48, 32)
    assert slot_footprints(Program().burn(1.0).instructions) == {}
