"""Reading a `.pt` file without running pickled code, in bounded time and memory.

Every file is read with `RestrictedUnpickler`, which allows containers and tensor / numpy
rebuilders, turns the classes the fairseq fork pickles (`omegaconf`, `argparse.Namespace`,
`fairseq.data.dictionary.Dictionary`) into stand-ins that only collect their state as data,
and refuses every other class. Neither fairseq nor omegaconf is imported.

A pickle is a small program: a crafted one can ask an allowed callable for a huge buffer
(`bytearray(2**30)`, repeated), or share one list in two places at every level of a
40-level structure, which is 1.6 kB on disk and 2**40 items to anything that walks it.
So a load is bounded the same way for every command (`tera info`, `tera convert`, resuming
`tera pretrain`, an upstream read by `tera downstream`):

- the allowed calls that build from a size or a sequence share one budget of bytes
  (`CALL_BUDGET`), checked before each call;
- the loaded structure is walked once (shared parts counted as often as they are reached)
  and refused past `MAX_OBJECTS` items, `MAX_DEPTH` levels or a cycle;
- any error inside an allowed call, a recursion too deep or a size too large is one line:
  "not a checkpoint tera-speech can read safely: ...".
"""

from __future__ import annotations

import math
import pickle
import types
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from tera.errors import UserError
from tera.runs.files import describe_os_error

UNSAFE = "not a checkpoint tera-speech can read safely"

# Bytes that the allowed calls of one file may build from a size or a sequence. Legitimate
# checkpoints build tensors from their storages (not counted) and only small things this
# way (numpy scalars, protocol-2 bytes); a crafted one asks for gigabytes.
CALL_BUDGET = 1 << 26
MAX_OBJECTS = 10_000_000  # items of the loaded structure, shared parts counted each time
MAX_DEPTH = 100  # levels of nesting; a real checkpoint has fewer than ten


def read_torch_file(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """The unpickled content of `path`; `UserError` for a file that is not a PyTorch file,
    is truncated, names a class outside the allow-list, or asks for more work or memory
    than a checkpoint needs."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError as err:  # permission denied, a folder, ...
        raise UserError(f"{path}: cannot read: {describe_os_error(err)}") from err
    if head != b"PK" and head[:1] != b"\x80":  # neither a zip (cut or whole) nor a pickle
        raise UserError(f"{path}: not a checkpoint (not a PyTorch file)")
    try:
        content = torch.load(path, map_location=map_location, weights_only=False,
                             pickle_module=restricted_pickle())
        check_structure(content)
        return content
    except RefusedClass as err:
        raise UserError(f"{path}: refusing to unpickle {err} (not on the allow-list)") from err
    except Unsafe as err:
        raise UserError(f"{path}: {UNSAFE}: {err}") from err
    except (EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise UserError(f"{path}: corrupt or truncated checkpoint ({first_line(err)})") from err
    except RecursionError as err:
        raise UserError(f"{path}: {UNSAFE}: nested too deeply") from err
    except MemoryError as err:
        raise UserError(f"{path}: {UNSAFE}: it asks for more memory than this machine has"
                        ) from err
    except Exception as err:  # an allowed call given the wrong arguments, a torn storage...
        if isinstance(err, RuntimeError) and not isinstance(err, NotImplementedError):
            # torch's own reader: truncated zip, missing storage record, bad magic number
            raise UserError(f"{path}: corrupt or truncated checkpoint ({first_line(err)})"
                            ) from err
        raise UserError(f"{path}: {UNSAFE}: {type(err).__name__}: {first_line(err)}") from err


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its class name when the message is empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class _StandIn:
    """What a pickled omegaconf / fairseq / argparse object becomes: its state, as data."""

    state: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # dict subclasses (DictConfig)
        if not isinstance(self.state, dict):
            self.state = {}
        self.state.setdefault("_items", {})[key] = value


def _stand_in_type(qualified: str) -> type:
    return type(qualified.rsplit(".", 1)[-1], (_StandIn,), {"qualified": qualified})


# Classes a checkpoint may name: containers, tensor and numpy rebuilders (they build arrays
# from bytes and run nothing else), and `_codecs.encode`, protocol 2's way to write bytes.
ALLOWED = {
    ("collections", "OrderedDict"), ("collections", "defaultdict"),
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "set"), ("builtins", "tuple"),
    ("builtins", "frozenset"), ("builtins", "int"), ("builtins", "float"),
    ("builtins", "bool"), ("builtins", "complex"), ("builtins", "slice"),
    ("builtins", "bytes"), ("builtins", "bytearray"), ("_codecs", "encode"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch", "Size"), ("torch", "device"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "dtype"), ("numpy", "ndarray"),
}
_PYTHON2_NAMES = {("__builtin__", "long"): ("builtins", "int")}
# Classes whose pickled state is only data: they become stand-ins, their code never runs.
_STAND_IN_MODULES = ("omegaconf", "fairseq.data.dictionary", "argparse", "typing", "enum")


def _python3_name(module: str, name: str) -> tuple[str, str]:
    """A global's name as Python 3 spells it (protocol-2 pickles use `__builtin__`)."""
    module, name = _PYTHON2_NAMES.get((module, name), (module, name))
    return ("builtins" if module == "__builtin__" else module), name


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only allowed classes (`ALLOWED`, torch storages), stand-ins
    for the fork's config classes, and spends `budget` on the calls that allocate."""

    budget: CallBudget | None = None

    def find_class(self, module: str, name: str) -> Any:
        """The class or callable a pickle names: allowed ones (those that allocate wrapped to
        pay the budget first), a stand-in for the fork's config classes; any other raises
        `RefusedClass`."""
        module, name = _python3_name(module, name)
        if (module, name) in ALLOWED or (module == "torch" and name.endswith("Storage")):
            found = super().find_class(module, name)
            measure = _ALLOCATING.get((module, name))
            return found if measure is None else _Budgeted(found, measure, self.budget,
                                                           f"{module}.{name}")
        if module.startswith(_STAND_IN_MODULES):
            return _stand_in_type(f"{module}.{name}")
        raise RefusedClass(f"{module}.{name}")


def restricted_pickle() -> types.SimpleNamespace:
    """The `pickle_module` for one `torch.load`: its unpicklers (torch makes several for a
    legacy file) share one `CallBudget`."""
    budget = CallBudget()

    class Unpickler(RestrictedUnpickler):
        pass

    Unpickler.budget = budget
    return types.SimpleNamespace(
        __name__="tera.checkpoint.unpickler", Unpickler=Unpickler,
        load=lambda file, **kwargs: Unpickler(file, **kwargs).load())


def to_plain(obj: Any) -> Any:
    """Turn stand-ins (DictConfig, ListConfig, AnyNode, Dictionary, Namespace) into plain
    dicts, lists and values; tuples become lists (as in JSON)."""
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if not isinstance(obj, _StandIn):
        return obj
    return to_plain(_data_of(obj))


def _data_of(stand_in: _StandIn) -> Any:
    """The data a stand-in holds (omegaconf's parent links and flags left out)."""
    state = stand_in.state if isinstance(stand_in.state, dict) else {}
    name = getattr(stand_in, "qualified", "")
    if name.endswith(("DictConfig", "ListConfig")):
        return state.get("_content")
    if name.endswith("Node"):  # AnyNode, StringNode, ...: the value is in `_val`
        return state.get("_val")
    if name.endswith("Namespace"):
        return {k: v for k, v in state.items() if not k.startswith("_")}
    return state  # fairseq's Dictionary: its attributes


# --- bounded work ----------------------------------------------------------------------------


class RefusedClass(Exception):
    """A pickle names a class outside the allow-list (the message is its qualified name)."""


class Unsafe(Exception):
    """The file asks for more than a checkpoint needs (the message says what)."""


class CallBudget:
    """Bytes the allowed calls of one load may still build."""

    def __init__(self, limit: int = CALL_BUDGET) -> None:
        self.left = limit

    def spend(self, size: int, call: str) -> None:
        """Pay `size` bytes for `call` (named in the error), or raise `Unsafe` when the
        budget left is smaller."""
        if size > self.left:
            raise Unsafe(f"refusing to unpickle {call}: an absurd allocation (the calls of "
                         f"a checkpoint may build {CALL_BUDGET >> 20} MiB in all)")
        self.left -= size


class _Budgeted:
    """An allowed callable that may allocate: its size is paid from the budget first."""

    def __init__(self, call: Callable, measure: Callable[..., int], budget: CallBudget | None,
                 name: str) -> None:
        self.call, self.measure, self.budget, self.name = call, measure, budget, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        args = tuple(a.call if isinstance(a, _Budgeted) else a for a in args)
        if self.budget is not None:
            size = self.measure(*args)
            self.budget.spend(size, f"{self.name}({_short(args)})")
        return self.call(*args, **kwargs)


def _short(args: tuple) -> str:
    text = ", ".join(_short_one(a) for a in args)
    return text if len(text) <= 60 else text[:57] + "..."


def _short_one(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, str, list, tuple, dict, set, frozenset)) \
            and len(value) > 8:
        return f"<{type(value).__name__} of {len(value)}>"
    return repr(value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _sequence_bytes(*args: Any) -> int:
    """`bytes(n)` / `bytearray(n)` zero-fill n bytes; from a sequence, about its length;
    containers (`list(x)`, `dict(x)`) hold a pointer (8 bytes) per item."""
    first = args[0] if args else None
    if _is_count(first):
        return max(first, 0)
    try:
        return len(first) * 8 if first is not None else 0
    except TypeError:
        return 0  # not sized: the call itself will refuse it


def _array_bytes(*args: Any) -> int:
    """numpy's `_reconstruct(cls, shape, dtype)` / `ndarray(shape, dtype)`: the array's
    bytes, from the shape (8 bytes an element: the widest common dtype)."""
    for shape in args[:2]:
        if _is_count(shape):
            shape = (shape,)
        if isinstance(shape, (tuple, list)) and all(_is_count(n) for n in shape):
            return 8 * math.prod(max(n, 0) for n in shape)
    return 0


_ALLOCATING: dict[tuple[str, str], Callable[..., int]] = {
    **{("builtins", name): _sequence_bytes
       for name in ("bytes", "bytearray", "list", "tuple", "set", "frozenset", "dict")},
    ("collections", "OrderedDict"): _sequence_bytes, ("_codecs", "encode"): _sequence_bytes,
    ("torch", "Size"): _sequence_bytes,
    ("numpy.core.multiarray", "_reconstruct"): _array_bytes,
    ("numpy._core.multiarray", "_reconstruct"): _array_bytes,
    ("numpy", "ndarray"): _array_bytes,
}


def check_structure(content: Any) -> None:
    """Walk what a load built as `to_plain` does, each shared part once, and refuse a
    structure that expands past `MAX_OBJECTS` items (counting shared parts as often as they
    are reached, as `to_plain` and JSON would), nests deeper than `MAX_DEPTH` or contains
    itself."""
    expanded: dict[int, int] = {}  # id -> items below it, itself included
    on_path: set[int] = set()
    stack: list[tuple[Any, int, bool]] = [(content, 0, False)]
    while stack:
        node, depth, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            expanded[key] = 1 + sum(expanded.get(id(c), 1) for c in _children(node))
            if expanded[key] > MAX_OBJECTS:
                raise Unsafe(f"shared parts expand to more than {MAX_OBJECTS:,} items")
            continue
        if key in expanded:
            continue
        if key in on_path:
            raise Unsafe("a structure that contains itself")
        if depth > MAX_DEPTH:
            raise Unsafe(f"nested deeper than {MAX_DEPTH} levels")
        on_path.add(key)
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in _children(node)
                     if _is_container(child))


def _is_container(value: Any) -> bool:
    return isinstance(value, (dict, list, tuple, set, frozenset, _StandIn))


def _children(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        yield from node.keys()
        yield from node.values()
    elif isinstance(node, (list, tuple, set, frozenset)):
        yield from node
    elif isinstance(node, _StandIn):
        yield _data_of(node)
