"""Method variants of the paper (Sec. 3.2) as chains of stages.

| method | stages | postprocessing as the original |
| --- | --- | --- |
| ``synthseg+`` | S1 -> D -> S2 | robust mode: fast (no topology step) |
| ``s1+s2`` | S1 -> S2 | fast |
| ``synthseg`` | one network, smoothing, left-right flip averaging | topology |
| ``synthseg+d`` | synthseg -> D_all | topology |
| ``s1+s2+d`` | S1 -> S2 -> D_all | fast |

Methods that share a chain prefix share its computation (S1 runs once for ``synthseg+``,
``s1+s2`` and ``s1+s2+d``).
"""

from __future__ import annotations

from dataclasses import dataclass

from morphometry.errors import InputError
from morphometry.methods import DEFAULT_METHOD, METHOD_NAMES

# stage name -> (bundle role, reads image, reads previous)
STAGES = {
    "s1": ("s1", True, False),
    "d": ("d", False, True),
    "s2": ("s2", True, True),
    "synthseg": ("synthseg", True, False),
    "d_all": ("d_all", False, True),
}


@dataclass(frozen=True)
class Method:
    name: str
    chain: tuple[str, ...]
    topology: bool  # postprocessing mode of the original for this method

    @property
    def roles(self) -> set[str]:
        return {STAGES[s][0] for s in self.chain}


_CHAINS = {  # name -> (stages, topology clean-up as the original)
    "synthseg+": (("s1", "d", "s2"), False),
    "s1+s2": (("s1", "s2"), False),
    "synthseg": (("synthseg",), True),
    "synthseg+d": (("synthseg", "d_all"), True),
    "s1+s2+d": (("s1", "s2", "d_all"), False),
}
METHODS = {name: Method(name, *_CHAINS[name]) for name in METHOD_NAMES}


def resolve_methods(names: list[str] | None) -> list[Method]:
    """Methods in an order that keeps shared chain prefixes adjacent; InputError for unknown names."""
    names = list(dict.fromkeys(names or [DEFAULT_METHOD]))
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise InputError(f"unknown method(s) {', '.join(unknown)} (choose from {', '.join(METHODS)})",
                         setting="methods")
    return sorted((METHODS[n] for n in names), key=lambda m: m.chain)


def supported_methods(roles: set[str]) -> list[str]:
    """Methods whose networks are all among ``roles``."""
    return [name for name, m in METHODS.items() if m.roles <= roles]
