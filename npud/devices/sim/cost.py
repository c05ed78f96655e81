"""The cost model: how long the simulated NPU takes for a job, as a pure function.

Roofline per op
---------------
Each op is either compute-bound or memory-bound. Its compute time is its operation count
divided by the engine's peak rate for the op's compute dtype; its memory time is the sum,
over its operands, of the bytes it actually moves divided by the bandwidth of the tier that
operand's buffer lives in (so the same op is faster with operands in SRAM than in DRAM).
The op takes the larger of the two (compute and data movement overlap perfectly, as in a
double-buffered DMA pipeline). A job takes the board's launch overhead plus the sum of its
op times; a BURN op takes exactly its ``seconds``, and a job made only of BURN ops has no
launch overhead, so that a BURN(d) job occupies its engine for exactly ``d`` (scheduler tests
reason in round numbers).

The compute dtype of an op is the narrowest dtype it reads (int8 weights run at the int8
rate, as on NPUs that quantise activations on the fly); I32 work runs at the f32 rate.
Block-quantised weights (Q8_0, Q4_1) run at the int8 rate too (their blocks are widened to
int8 lanes plus a per-block scale on the fly) and move only their packed bytes: a Q4_1 matmul
reads 5 bits per weight from DRAM, which is what makes it faster than int8 when memory-bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from npud.devices.sim.profiles import BoardProfile
from npud.isa import DType, Instruction, Op, Program, accesses
from npud.vocab import MemoryTier

_NARROWNESS = {
    DType.Q4_1: 0,
    DType.Q8_0: 0,
    DType.I8: 0,
    DType.F16: 1,
    DType.F32: 2,
    DType.I32: 3,
}

# Operations per output element for the elementwise and row-wise ops.
_OPS_PER_ELEMENT = {
    Op.ADD: 1,
    Op.MUL: 1,
    Op.SILU: 4,
    Op.SOFTMAX: 5,
    Op.RMSNORM: 4,
    Op.ROPE: 6,
    Op.EMBED: 0,
    Op.KV_WRITE: 0,
    Op.COPY: 0,
}


@dataclass(frozen=True, slots=True)
class OpCost:
    """The modelled cost of one op."""

    ops: int
    compute_s: float
    memory_s: float

    @property
    def seconds(self) -> float:
        """The op's time: the larger of compute and memory time."""
        return max(self.compute_s, self.memory_s)

    @property
    def memory_bound(self) -> bool:
        """Whether data movement, not arithmetic, sets the op's time."""
        return self.memory_s >= self.compute_s


def op_count(ins: Instruction) -> int:
    """The arithmetic operations the op performs (a multiply-add counts as two)."""
    if ins.op is Op.MATMUL:
        m, k = ins.operand("a").shape
        n = ins.operand("out").shape[1]
        return 2 * m * n * k
    if ins.op is Op.ATTENTION:
        t = ins.operand("q").shape[0]
        p = ins.params
        pairs = t * p.start_pos + t * (t + 1) // 2  # (query, key) pairs under the causal mask
        return p.n_heads * pairs * (4 * p.head_dim + 5)
    if ins.op in (Op.ARGMAX, Op.TOPK):
        return ins.operand("x").numel
    if ins.op is Op.BURN:
        return 0
    return _OPS_PER_ELEMENT[ins.op] * ins.operands[0].numel


def compute_dtype(ins: Instruction) -> DType:
    """The dtype whose peak rate bounds the op: the narrowest dtype among its inputs."""
    reads = [a.tensor.dtype for a in accesses(ins) if not a.write]
    if not reads:
        return DType.F32
    narrowest = min(reads, key=_NARROWNESS.__getitem__)
    return DType.I8 if narrowest in (DType.Q8_0, DType.Q4_1) else narrowest


def _bandwidth(tier: MemoryTier, profile: BoardProfile) -> float:
    return profile.sram_bandwidth if tier is MemoryTier.SRAM else profile.dram_bandwidth


def op_cost(ins: Instruction, slot_tiers: Sequence[MemoryTier], profile: BoardProfile) -> OpCost:
    """The modelled cost of one op whose operands live in ``slot_tiers[slot]``.

    BURN reports its ``seconds`` as compute time.

    Raises:
        IndexError: an operand names a slot beyond ``slot_tiers``.
    """
    if ins.op is Op.BURN:
        return OpCost(0, ins.params.seconds, 0.0)
    ops = op_count(ins)
    compute = ops / profile.peak(compute_dtype(ins))
    memory = sum(
        a.bytes_moved / _bandwidth(slot_tiers[a.tensor.slot], profile) for a in accesses(ins)
    )
    return OpCost(ops, compute, memory)


def estimate(
    program: Program | Sequence[Instruction],
    slot_tiers: Sequence[MemoryTier],
    profile: BoardProfile,
) -> float:
    """The modelled duration of a job: launch overhead plus the sum of its op times.

    A job of BURN ops only has no launch overhead (it takes exactly its burn time).

    Pure: depends only on the program, the tier of each bound buffer (by slot) and the board.

    Raises:
        IndexError: an operand names a slot beyond ``slot_tiers``.
    """
    instructions = program.instructions if isinstance(program, Program) else program
    only_burn = all(ins.op is Op.BURN for ins in instructions)
    launch = 0.0 if only_burn and instructions else profile.launch_overhead_s
    return launch + sum(op_cost(ins, slot_tiers, profile).seconds for ins in instructions)
