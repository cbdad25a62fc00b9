"""Reading a `.pt` file without running pickled code.

Every file is first read with `torch.load(weights_only=True)`. Only a file that names other
classes (the fairseq fork's own checkpoints pickle `omegaconf` and
`fairseq.data.dictionary.Dictionary` objects) is read again with `RestrictedUnpickler`, which
turns those classes into stand-ins that only collect their state as data, allows containers
and tensor / numpy rebuilders, and refuses every other class. Allowed callables that could
be abused to exhaust memory (`bytearray(10**15)`) are refused when their arguments are
absurd. Neither fairseq nor omegaconf is imported.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from tera.errors import UserError
from tera.runs.files import describe_os_error


def read_torch_file(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """The unpickled content of `path`; `UserError` for a file that is not a PyTorch file,
    is truncated, names a class outside the allow-list or asks for an absurd allocation."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError as err:  # permission denied, a folder, ...
        raise UserError(f"{path}: cannot read: {describe_os_error(err)}") from err
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":  # nor a legacy pickle
        raise UserError(f"{path}: not a checkpoint (not a PyTorch file)")
    check_allocations(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" not in str(err) and "Unsupported global" not in str(err):
            raise UserError(f"{path}: corrupt or truncated checkpoint ({err})") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise UserError(f"{path}: corrupt or truncated checkpoint ({first_line(err)})") from err
    # A fairseq-written file pickles omegaconf/fairseq objects: read it with our allow-list.
    try:
        return torch.load(path, map_location=map_location, weights_only=False,
                          pickle_module=RestrictedPickle)
    except RefusedClass as err:
        raise UserError(f"{path}: refusing to unpickle {err} (not on the allow-list)") from err
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        raise UserError(f"{path}: corrupt or truncated checkpoint ({first_line(err)})") from err
    except MemoryError as err:  # what check_allocations could not foresee
        raise UserError(f"{path}: refusing a checkpoint that asks for more memory than this "
                        "machine has") from err


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class RefusedClass(Exception):
    pass


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
    def find_class(self, module: str, name: str) -> Any:
        module, name = _python3_name(module, name)
        if (module, name) in ALLOWED or (module == "torch" and name.endswith("Storage")):
            return super().find_class(module, name)
        if module.startswith(_STAND_IN_MODULES):
            return _stand_in_type(f"{module}.{name}")
        raise RefusedClass(f"{module}.{name}")


class RestrictedPickle:
    """The `pickle_module` torch.load uses: only `Unpickler` and `load` are needed."""

    Unpickler = RestrictedUnpickler

    @staticmethod
    def load(file: io.BufferedIOBase, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()


def to_plain(obj: Any) -> Any:
    """Turn stand-ins (DictConfig, ListConfig, AnyNode, Dictionary, Namespace) into plain
    dicts, lists and values; tuples become lists (as in JSON)."""
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if not isinstance(obj, _StandIn):
        return obj
    state = obj.state if isinstance(obj.state, dict) else {}
    name = getattr(obj, "qualified", "")
    if name.endswith(("DictConfig", "ListConfig")):
        content = state.get("_content")
        return to_plain(content) if content is not None else None
    if name.endswith("Node"):  # AnyNode, StringNode, ...: the value is in `_val`
        return to_plain(state.get("_val"))
    if name.endswith("Namespace"):
        return to_plain({k: v for k, v in state.items() if not k.startswith("_")})
    return to_plain(state)  # fairseq's Dictionary: its attributes


# --- absurd allocations -----------------------------------------------------------------------

# Bytes or array elements an allowed constructor may be asked for with a size argument
# (`bytearray(n)` zero-fills n bytes). Legitimate checkpoints never do this: their bytes and
# arrays are built from data in the file.
MAX_ALLOCATION = 1 << 26


class RefusedAllocation(Exception):
    pass


def check_allocations(path: Path) -> None:
    """Unpickle `path`'s pickles without building anything (every class a stand-in, no
    tensor data read) to find allowed callables asked for absurd allocations, such as
    `bytearray(10**15)`: torch's own `weights_only` loader allows `bytearray` and would try
    to allocate it. `UserError` naming the call."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                _AllocationScanner(io.BytesIO(archive.read(name))).load()
        else:  # a legacy file: magic number, protocol, system info, the object, storage keys
            with open(path, "rb") as f:
                scanner = _AllocationScanner(f)
                for _ in range(5):
                    scanner.load()
    except RefusedAllocation as err:
        raise UserError(f"{path}: refusing to unpickle {err}: an absurd allocation") from err
    except Exception:  # a malformed pickle: the real loader says what is wrong
        pass


def _refuse_bytes(*args: Any, **kwargs: Any) -> bytes:
    """`bytes(n)` / `bytearray(n)` with an absurd n; built from data, nothing to check."""
    size = args[0] if args else None
    if isinstance(size, int) and not isinstance(size, bool) and size > MAX_ALLOCATION:
        raise RefusedAllocation(f"a {size}-byte buffer")
    return b""


def _refuse_array(*args: Any, **kwargs: Any) -> None:
    """numpy's `_reconstruct(cls, shape, dtype)` / `ndarray(shape, ...)` with an absurd
    shape."""
    for shape in args[:2]:
        if isinstance(shape, int) and not isinstance(shape, bool):
            shape = (shape,)
        if isinstance(shape, (tuple, list)) and shape and all(
                isinstance(n, int) and not isinstance(n, bool) for n in shape):
            size = 1
            for n in shape:
                size *= max(n, 0)
            if size > MAX_ALLOCATION:
                raise RefusedAllocation(f"a numpy array of shape {tuple(shape)}")
    return None


class _Anything(_StandIn):
    """In the scan: whatever a class would have built (lists and dicts included)."""

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


_ALLOCATING = {("builtins", "bytes"): _refuse_bytes, ("builtins", "bytearray"): _refuse_bytes,
               ("numpy.core.multiarray", "_reconstruct"): _refuse_array,
               ("numpy._core.multiarray", "_reconstruct"): _refuse_array,
               ("numpy", "ndarray"): _refuse_array}


class _AllocationScanner(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return _ALLOCATING.get(_python3_name(module, name), _Anything)

    def persistent_load(self, pid: Any) -> None:  # tensor storages: not read
        return None
