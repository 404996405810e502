"""The three GEMMs of a float8 layer and the axes each one contracts.

A float8 Dense or EinsumDense layer computes Y = X·W and, in training, dX = dY·Wᵀ and
dW = Xᵀ·dY. Row- and block-scaled recipes (recipes.py) group values along what a GEMM sums,
so they need each GEMM's contraction axes in the layer's own einsum letters: `operand_axes`
names them for the forward GEMM (what the probe measures), `gemm_layout` for all three.
Pure string work: nothing here imports jax.
"""


def operand_axes(layer) -> dict:
    """{role: (its axis letters, the letters its blocks run along)} of a float8 layer, as the
    forward GEMM and the input-gradient GEMM block them (what the probe measures).

    Blocks run along what a matmul contracts: for inputs and kernel the contracted axes, for
    the output gradient the kernel's output axes (the input-gradient matmul contracts those).
    A Dense layer reads as the einsum "...a,ab->...b"; "..." stands for unblocked axes.
    """
    equation = getattr(layer, "equation", None) or DENSE_EQUATION
    inputs, rest = equation.split(",")
    kernel, outputs = rest.split("->")
    contracted = "".join(c for c in kernel if c in inputs and c not in outputs)
    return {
        "inputs": (inputs, contracted),
        "kernel": (kernel, contracted),
        "outputs_grad": (outputs, "".join(c for c in kernel if c not in contracted)),
    }


DENSE_EQUATION = "...a,ab->...b"


def gemm_layout(equation: str | None, inputs_rank: int) -> dict:
    """The three GEMMs of a float8 layer computing `equation` ("inputs,kernel->outputs"; None:
    a Dense layer) on inputs of rank `inputs_rank`:

        {gemm: (einsum equation, {role: (axis letters, letters contracted in that GEMM)})}

    fprop contracts K (in inputs and kernel, not outputs), dgrad N (in outputs and kernel,
    not inputs), wgrad M (in inputs and outputs, not kernel: the tokens). The ellipsis is
    spelled out in capital letters so that each GEMM's einsum can name every axis.
    """
    i, k, o = _explicit(equation or DENSE_EQUATION, inputs_rank)
    stray = [c for c in i if c not in k + o] + [c for c in k if c not in i + o]
    if stray:
        raise ValueError(f"einsum {equation!r} sums axes {''.join(stray)} of one operand alone")

    def contracted(first, second, other, order):
        return "".join(c for c in order if c in first and c in second and c not in other)

    k_axes, n_axes, m_axes = contracted(i, k, o, k), contracted(o, k, i, k), contracted(i, o, k, i)
    return {
        "fprop": (f"{i},{k}->{o}", {"inputs": (i, k_axes), "kernel": (k, k_axes)}),
        "dgrad": (f"{o},{k}->{i}", {"outputs_grad": (o, n_axes), "kernel": (k, n_axes)}),
        "wgrad": (f"{i},{o}->{k}", {"inputs": (i, m_axes), "outputs_grad": (o, m_axes)}),
    }


def _explicit(equation: str, inputs_rank: int) -> tuple[str, str, str]:
    """(inputs, kernel, outputs) letters of `equation` with "..." replaced by fresh capitals."""
    inputs, rest = equation.replace(" ", "").split(",")
    kernel, outputs = rest.split("->")
    if "..." in kernel:
        raise ValueError(f"einsum {equation!r}: a kernel with '...' is not a float8 layer's")
    named = len(inputs.replace("...", ""))
    if "..." not in inputs and named != inputs_rank:
        raise ValueError(f"einsum {equation!r} does not fit inputs of rank {inputs_rank}")
    fresh = "".join(c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in equation)
    ellipsis = fresh[: max(inputs_rank - named, 0)]
    return inputs.replace("...", ellipsis), kernel, outputs.replace("...", ellipsis)
