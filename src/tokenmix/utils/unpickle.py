"""One bounded allow-list unpickler for every pickle tokenmix reads from outside.

Paddle ``.pdparams`` files and CIFAR-10 python batches are pickles; PyTorch ``.pth`` files hold
one (``data.pkl``). An allow-list of globals stops a pickle from *calling* arbitrary code, but
not from *amplifying*: the allowed callables are enough for a 200-byte file to ask for terabytes
(``_codecs.encode(x, "hex")`` doubles its input, nested forty times; numpy's ``_reconstruct``
and ``ndarray.__setstate__`` allocate whatever shape they are given before checking the data;
a ``LONG_BINPUT`` index makes the C unpickler zero a memo table that large). So every pickle is
first *scanned* without running it (:func:`scan_pickle`, built on :func:`pickletools.genops`):
the scan simulates the pickle machine's stack and memo with placeholder objects and refuses,
before anything is allocated,

- a global outside the caller's allow-list, or an allowed one used in a way a legitimate file
  never does (``_codecs.encode`` with any codec but latin-1, ``numpy.ndarray(...)`` called
  directly, an object array whose shape does not match its items, ...);
- more bytes created (strings, bytes, arrays, codec output) than a budget tied to the input
  size (:class:`PickleLimits`: legitimate pickles store arrays raw, so they do not expand);
- objects nested deeper than ``max_depth`` (hashing a deep tuple overflows the C stack) or a
  reference cycle;
- more than ``max_objects`` objects and references.

Only a pickle that passes is loaded, by :func:`load_pickle`, with the same allow-list; its
callables are wrapped so that they check their arguments again at run time. Each refusal is an
:class:`UnsafePickleError` naming the file and the bound (``error.bound``).

The scan also serves ``torch.load(weights_only=True)`` (whose own unpickler has the same
amplification holes): :func:`torch_checkpoint_globals` is the allow-list for a state-dict
checkpoint, and the scan reports the storages a file claims so the caller can compare them with
the data that is really there (:func:`tokenmix.models.checkpoint.check_torch_file`).
"""

from __future__ import annotations

import codecs
import functools
import io
import math
import pickle
import pickletools
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, NoReturn

import numpy as np

__all__ = [
    "NUMPY_ARRAY_GLOBALS",
    "ORDERED_DICT_GLOBALS",
    "AllowedGlobal",
    "PickleLimits",
    "PickleScan",
    "UnsafePickleError",
    "load_pickle",
    "scan_pickle",
    "torch_checkpoint_globals",
]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle refused before it ran: ``bound`` says which rule, the message names the file.

    ``bound`` is one of ``"global"`` (not on the allow-list), ``"call"`` (an allowed global used
    in a way the scan cannot prove bounded), ``"bytes"``, ``"depth"``, ``"objects"`` (the
    :class:`PickleLimits`), ``"storage"`` (a torch storage larger than its data) or ``"format"``
    (not a well-formed pickle, or an opcode no reader of ours needs).
    """

    def __init__(self, source: str, bound: str, reason: str, global_name: str = "") -> None:
        shown = reason if bound in ("global", "format") else f"refused: {reason}"
        super().__init__(f"{source}: {shown}")
        self.source, self.bound, self.reason = source, bound, reason
        #: ``module.name`` of the refused global (bound ``"global"``)
        self.global_name = global_name


@dataclass(frozen=True)
class PickleLimits:
    """What a pickle may build. The defaults are far above any real checkpoint or CIFAR batch.

    Attributes:
        bytes_per_input_byte: bytes of strings/bytes/arrays the pickle may create per byte of
            input. Legitimate files store array data raw (numpy's ``setstate`` and latin-1
            ``_codecs.encode`` each copy it at most once), so they need about 2.
        min_bytes: the budget's floor, so that tiny files are not held to a tiny budget.
        max_depth: deepest nesting of containers (a state_dict is about 6 deep).
        max_objects: objects plus references stored in containers (a CIFAR batch has ~40k,
            a large state_dict ~20 per tensor).
    """

    bytes_per_input_byte: int = 8
    min_bytes: int = 64 * 2**20
    max_depth: int = 100
    max_objects: int = 2_000_000

    def byte_budget(self, input_size: int) -> int:
        """The bytes a pickle of ``input_size`` bytes may create."""
        return self.min_bytes + self.bytes_per_input_byte * input_size


@dataclass(frozen=True)
class AllowedGlobal:
    """One global a pickle may name: what it resolves to and how the scan checks its use.

    ``kind`` is one the scan knows (``encode``, ``np_reconstruct``, ``np_ndarray``,
    ``np_dtype``, ``ordered_dict``, ``namespace``, ``torch_rebuild_tensor``,
    ``torch_rebuild_parameter``, ``torch_storage``); ``itemsize`` is a storage type's element
    size. ``obj`` is ``None`` for globals that only the scan sees (torch's, which torch.load
    resolves itself).
    """

    kind: str
    obj: Any = None
    itemsize: int = 0


_KINDS = frozenset(
    {
        "encode",
        "np_reconstruct",
        "np_ndarray",
        "np_dtype",
        "ordered_dict",
        "namespace",
        "torch_rebuild_tensor",
        "torch_rebuild_parameter",
        "torch_storage",
    }
)
# protocol-2 pickles spell bytes as _codecs.encode(text, "latin1"); any other codec is refused
# (hex, base64, utf-32... all expand their input, and nesting them is exponential)
_LATIN1 = frozenset({"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"})
_NUMPY_DTYPE_KINDS = "biufcO"
_MAX_CODE_LEN = 32  # a dtype code such as '<f4'; a longer "code" is not one numpy writes


def _numpy_reconstruct() -> Any:
    return np.empty(0).__reduce__()[0]  # numpy.core / numpy._core, whichever this numpy has


#: numpy arrays as ``pickle`` writes them, under numpy 1.x and 2.x names, plus protocol-2 bytes.
NUMPY_ARRAY_GLOBALS: Mapping[tuple[str, str], AllowedGlobal] = {
    ("numpy._core.multiarray", "_reconstruct"): AllowedGlobal(
        "np_reconstruct", _numpy_reconstruct()
    ),
    ("numpy.core.multiarray", "_reconstruct"): AllowedGlobal(
        "np_reconstruct", _numpy_reconstruct()
    ),
    ("numpy", "ndarray"): AllowedGlobal("np_ndarray", np.ndarray),
    ("numpy", "dtype"): AllowedGlobal("np_dtype", np.dtype),
    ("_codecs", "encode"): AllowedGlobal("encode", codecs.encode),
}
#: ``collections.OrderedDict`` (older Paddle and every torch state_dict).
ORDERED_DICT_GLOBALS: Mapping[tuple[str, str], AllowedGlobal] = {
    ("collections", "OrderedDict"): AllowedGlobal("ordered_dict", OrderedDict),
}


@functools.lru_cache(maxsize=1)
def torch_checkpoint_globals() -> Mapping[tuple[str, str], AllowedGlobal]:
    """What a ``.pth`` state-dict checkpoint may name: a narrow subset of torch's weights_only
    allow-list (tensors, parameters, storages, OrderedDict, latin-1 bytes, and the
    ``argparse.Namespace`` timm stores its arguments in)."""
    import torch

    allowed: dict[tuple[str, str], AllowedGlobal] = {
        **ORDERED_DICT_GLOBALS,
        ("_codecs", "encode"): AllowedGlobal("encode"),
        ("argparse", "Namespace"): AllowedGlobal("namespace"),
        ("torch._utils", "_rebuild_tensor"): AllowedGlobal("torch_rebuild_tensor"),
        ("torch._utils", "_rebuild_tensor_v2"): AllowedGlobal("torch_rebuild_tensor"),
        ("torch._utils", "_rebuild_parameter"): AllowedGlobal("torch_rebuild_parameter"),
    }
    for dtype, name in torch.storage._dtype_to_storage_type_map().items():
        if name.startswith(("QInt", "QUInt")):  # quantized tensors: not in our checkpoints
            continue
        for module in ("torch", "torch.cuda"):  # files saved from GPU tensors name torch.cuda
            allowed[(module, name)] = AllowedGlobal("torch_storage", itemsize=dtype.itemsize)
    allowed[("torch.storage", "UntypedStorage")] = AllowedGlobal("torch_storage", itemsize=1)
    return allowed


@dataclass
class PickleScan:
    """What :func:`scan_pickle` found: where the pickle ends, what it builds, what it claims."""

    end: int
    bytes_created: int
    objects: int
    depth: int
    #: torch storages by key: the bytes the pickle says each holds (persistent ids only)
    storages: dict[str, int] = field(default_factory=dict)


class _Node:
    """A placeholder for one object the pickle would build."""

    __slots__ = ("children", "depth", "info", "kind", "size", "value")

    def __init__(self, kind: str, value: Any = None, size: int = 0, info: Any = None) -> None:
        self.kind, self.value, self.size, self.info = kind, value, size, info
        self.children: list[_Node] | None = None
        self.depth = -1


_LABELS = {
    "str": "a string",
    "str8": "a string",
    "bytes": "a bytes object",
    "bytearray": "a bytearray",
    "int": "an integer",
    "ndarray": "a numpy array",
}
_KEEP_VALUE = 256  # literal strings longer than this keep only their size
_TEXT = ("str", "str8")  # str8: a protocol-0/1 STRING, str or bytes depending on `encoding`
_BYTES = ("bytes", "str8")


class _Scanner:
    def __init__(
        self,
        source: str,
        allowed: Mapping[tuple[str, str], AllowedGlobal],
        limits: PickleLimits,
        input_size: int,
        refusal: str,
        persistent: bool,
    ) -> None:
        for key, entry in allowed.items():
            if entry.kind not in _KINDS:
                raise ValueError(f"allow-list entry {key}: unknown kind {entry.kind!r}")
        self.source, self.allowed, self.limits = source, allowed, limits
        self.refusal, self.persistent = refusal, persistent
        self.input_size = input_size
        self.budget = limits.byte_budget(input_size)
        self.used = 0
        self.count = 0
        self.nodes: list[_Node] = []
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, _Node] = {}
        self.storages: dict[str, int] = {}
        self.deepest = 0

    # ----------------------------------------------------------------- bookkeeping

    def fail(self, bound: str, reason: str) -> NoReturn:
        raise UnsafePickleError(self.source, bound, reason)

    def charge(self, nbytes: int, what: str) -> None:
        self.used += nbytes
        if self.used > self.budget:
            self.fail(
                "bytes",
                f"byte budget exceeded: {what} brings what the pickle creates to "
                f"{self.used:,} bytes, over the {self.budget:,} allowed for a "
                f"{self.input_size:,}-byte file; a file of arrays does not expand like this",
            )

    def tick(self, n: int = 1) -> None:
        self.count += n
        if self.count > self.limits.max_objects:
            self.fail(
                "objects",
                f"more than {self.limits.max_objects:,} objects and references",
            )

    def new(self, kind: str, value: Any = None, size: int = 0, info: Any = None) -> _Node:
        self.tick()
        if size:
            self.charge(size, f"{_LABELS.get(kind, kind)} of {size:,} bytes")
        node = _Node(kind, value, size, info)
        self.nodes.append(node)
        return node

    def link(self, parent: _Node, items: list[_Node]) -> None:
        self.tick(len(items))
        if parent.children is None:
            parent.children = []
        parent.children.extend(items)

    def pop(self) -> _Node:
        if not self.stack:
            self.fail("format", "not a well-formed pickle (stack underflow)")
        return self.stack.pop()

    def top(self) -> _Node:
        if not self.stack:
            self.fail("format", "not a well-formed pickle (stack underflow)")
        return self.stack[-1]

    def pop_mark(self) -> list[_Node]:
        if not self.metastack:
            self.fail("format", "not a well-formed pickle (no mark)")
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def memo_put(self, index: int) -> None:
        # the C unpickler grows (and zeroes) its memo table up to the index: an index far beyond
        # the objects seen so far is an allocation, never what a pickler writes
        if index > len(self.memo) + 1:
            self.fail(
                "objects",
                f"memo index {index:,} with only {len(self.memo):,} objects memoised",
            )
        self.memo[index] = self.top()

    # ----------------------------------------------------------------- opcodes

    def run(self, ops: Iterator[tuple[Any, Any, int | None]]) -> int:
        for op, arg, pos in ops:
            name = op.name
            handler = getattr(self, f"op_{name}", None)
            if handler is None:
                self.fail("format", f"pickle opcode {name} is not needed by this reader")
            if handler(arg) is _STOP:
                self.check_depth()
                return (pos or 0) + 1
        self.fail("format", "not a well-formed pickle (no STOP)")

    def literal(self, kind: str, value: Any, size: int = 0) -> None:
        keep = value if size <= _KEEP_VALUE else None
        self.stack.append(self.new(kind, keep, size))

    def op_PROTO(self, arg: int) -> None:
        pass

    def op_FRAME(self, arg: int) -> None:
        if arg > self.input_size:
            self.fail("format", f"not a well-formed pickle (frame of {arg:,} bytes)")

    def op_STOP(self, arg: None) -> object:
        self.pop()
        return _STOP

    def _int(self, arg: int) -> None:
        self.literal("int", arg, arg.bit_length() // 8 if abs(arg) > 2**64 else 0)

    op_BININT = op_BININT1 = op_BININT2 = op_LONG = op_LONG1 = op_LONG4 = _int

    def op_INT(self, arg: int | bool) -> None:
        if isinstance(arg, bool):
            self.literal("bool", arg)
        else:
            self._int(arg)

    def _float(self, arg: float) -> None:
        self.literal("float", arg)

    op_FLOAT = op_BINFLOAT = _float

    def op_NONE(self, arg: None) -> None:
        self.literal("none", None)

    def op_NEWTRUE(self, arg: None) -> None:
        self.literal("bool", True)

    def op_NEWFALSE(self, arg: None) -> None:
        self.literal("bool", False)

    def _str8(self, arg: str | bytes) -> None:
        self.literal("str8", arg, len(arg))

    op_STRING = op_BINSTRING = op_SHORT_BINSTRING = _str8

    def _bytes(self, arg: bytes) -> None:
        self.literal("bytes", arg, len(arg))

    op_BINBYTES = op_SHORT_BINBYTES = op_BINBYTES8 = _bytes

    def op_BYTEARRAY8(self, arg: bytes) -> None:
        self.literal("bytearray", None, len(arg))

    def _str(self, arg: str) -> None:
        self.literal("str", arg, len(arg))

    op_UNICODE = op_SHORT_BINUNICODE = op_BINUNICODE = op_BINUNICODE8 = _str

    def _empty(kind: str) -> Any:
        def handler(self: _Scanner, arg: None) -> None:
            self.stack.append(self.new(kind))

        return handler

    op_EMPTY_LIST = _empty("list")
    op_EMPTY_DICT = _empty("dict")
    op_EMPTY_SET = _empty("set")

    def op_EMPTY_TUPLE(self, arg: None) -> None:
        self.stack.append(self.new("tuple"))

    def op_MARK(self, arg: None) -> None:
        self.metastack.append(self.stack)
        self.stack = []

    def _container(self, kind: str, items: list[_Node]) -> None:
        node = self.new(kind)
        self.link(node, items)
        self.stack.append(node)

    def op_TUPLE(self, arg: None) -> None:
        self._container("tuple", self.pop_mark())

    def op_LIST(self, arg: None) -> None:
        self._container("list", self.pop_mark())

    def op_FROZENSET(self, arg: None) -> None:
        self._container("frozenset", self.pop_mark())

    def op_DICT(self, arg: None) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            self.fail("format", "not a well-formed pickle (odd number of dict items)")
        self._container("dict", items)

    def _tuple_n(n: int) -> Any:
        def handler(self: _Scanner, arg: None) -> None:
            items = [self.pop() for _ in range(n)][::-1]
            self._container("tuple", items)

        return handler

    op_TUPLE1, op_TUPLE2, op_TUPLE3 = _tuple_n(1), _tuple_n(2), _tuple_n(3)
    del _empty, _tuple_n

    def _into(self, kinds: tuple[str, ...], items: list[_Node], what: str) -> None:
        target = self.top()
        if target.kind not in kinds:
            self.fail("call", f"{what} into a {target.kind}")
        self.link(target, items)

    def op_APPEND(self, arg: None) -> None:
        item = self.pop()
        self._into(("list",), [item], "APPEND")

    def op_APPENDS(self, arg: None) -> None:
        self._into(("list",), self.pop_mark(), "APPENDS")

    def op_SETITEM(self, arg: None) -> None:
        value, key = self.pop(), self.pop()
        self._into(("dict", "mapping"), [key, value], "SETITEM")

    def op_SETITEMS(self, arg: None) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            self.fail("format", "not a well-formed pickle (odd number of dict items)")
        self._into(("dict", "mapping"), items, "SETITEMS")

    def op_ADDITEMS(self, arg: None) -> None:
        self._into(("set",), self.pop_mark(), "ADDITEMS")

    def _put(self, arg: int) -> None:
        self.memo_put(arg)

    op_PUT = op_BINPUT = op_LONG_BINPUT = _put

    def op_MEMOIZE(self, arg: None) -> None:
        self.memo_put(len(self.memo))

    def _get(self, arg: int) -> None:
        node = self.memo.get(arg)
        if node is None:
            self.fail("format", f"not a well-formed pickle (memo {arg} read before it is set)")
        self.tick()
        self.stack.append(node)

    op_GET = op_BINGET = op_LONG_BINGET = _get

    def op_POP(self, arg: None) -> None:
        if self.stack:
            self.stack.pop()
        else:
            self.pop_mark()

    def op_POP_MARK(self, arg: None) -> None:
        self.pop_mark()

    def op_DUP(self, arg: None) -> None:
        self.stack.append(self.top())

    def _global(self, module: str, name: str) -> None:
        entry = self.allowed.get((module, name))
        if entry is None:
            raise UnsafePickleError(
                self.source,
                "global",
                f"refusing global {module}.{name}; {self.refusal}",
                global_name=f"{module}.{name}",
            )
        self.stack.append(self.new("global", (module, name), info=entry))

    def op_GLOBAL(self, arg: str) -> None:
        module, _, name = arg.partition(" ")
        self._global(module, name)

    def op_STACK_GLOBAL(self, arg: None) -> None:
        name, module = self.pop(), self.pop()
        if (
            name.kind != "str"
            or module.kind != "str"
            or not isinstance(name.value, str)
            or not isinstance(module.value, str)
        ):
            self.fail("format", "not a well-formed pickle (STACK_GLOBAL needs two strings)")
        self._global(module.value, name.value)

    def op_BINPERSID(self, arg: None) -> None:
        pid = self.pop()
        if not self.persistent:
            self.fail("call", "persistent ids are not allowed in this file")
        self.stack.append(self.storage(pid))

    def op_REDUCE(self, arg: None) -> None:
        args = self.pop()
        func = self.top()
        self.stack[-1] = self.call(func, args)

    def op_NEWOBJ(self, arg: None) -> None:
        args = self.pop()
        cls = self.pop()
        if cls.kind != "global" or cls.info.kind != "namespace":
            self.fail("call", f"NEWOBJ of {self.name(cls)}")
        self.stack.append(self.call(cls, args))

    def op_BUILD(self, arg: None) -> None:
        state = self.pop()
        self.build(self.top(), state)

    # ----------------------------------------------------------------- calls

    @staticmethod
    def name(node: _Node) -> str:
        if node.kind == "global":
            return ".".join(node.value)
        return f"a {node.kind}"

    def items(self, node: _Node) -> list[_Node]:
        return node.children or []

    def ints(self, node: _Node, what: str) -> list[int]:
        items = self.items(node)
        if node.kind != "tuple" or any(
            i.kind != "int" or not isinstance(i.value, int) or i.value < 0 for i in items
        ):
            self.fail("call", f"{what} is not a tuple of non-negative integers")
        return [i.value for i in items]

    def code(self, node: _Node, what: str) -> str:
        value = node.value
        if node.kind not in (*_TEXT, "bytes") or not isinstance(value, (str, bytes)):
            self.fail("call", f"{what} is not a dtype code")
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        if len(text) > _MAX_CODE_LEN:
            self.fail("call", f"{what} {text[:40]!r}... is not a dtype code")
        return text

    def dtype(self, code: str, what: str) -> np.dtype:
        try:
            dtype = np.dtype(code)
        except (TypeError, ValueError):
            self.fail("call", f"{what} {code!r} is not a numpy dtype")
        if dtype.kind not in _NUMPY_DTYPE_KINDS or dtype.shape or dtype.fields:
            self.fail("call", f"numpy dtype {code!r} (only plain numeric dtypes)")
        return dtype

    def call(self, func: _Node, args: _Node) -> _Node:
        if func.kind != "global":
            self.fail("call", f"calling {self.name(func)}")
        if args.kind != "tuple":
            self.fail("format", "not a well-formed pickle (call arguments are not a tuple)")
        kind, name, argv = func.info.kind, self.name(func), self.items(args)
        if kind == "encode":
            if (
                len(argv) != 2
                or argv[0].kind not in _TEXT
                or argv[1].kind != "str"
                or str(argv[1].value).lower() not in _LATIN1
            ):
                self.fail("call", f"{name} with anything but (text, 'latin1')")
            text = argv[0].value
            value = text.encode("latin-1", "replace") if isinstance(text, str) else None
            return self.new("bytes", value, size=argv[0].size)
        if kind == "np_reconstruct":
            if len(argv) != 3 or argv[0].kind != "global" or argv[0].info.kind != "np_ndarray":
                self.fail("call", f"{name} of anything but numpy.ndarray")
            shape = self.ints(argv[1], f"{name} shape")
            dtype = self.dtype(self.code(argv[2], f"{name} type"), f"{name} type")
            nbytes = math.prod(shape) * dtype.itemsize
            return self.new("ndarray", size=nbytes, info=dtype)
        if kind == "np_dtype":
            if not 1 <= len(argv) <= 3 or any(a.kind not in ("bool", "int") for a in argv[1:]):
                self.fail("call", f"{name} with unusual arguments")
            return self.new("dtype", info=self.dtype(self.code(argv[0], name), name))
        if kind == "ordered_dict":
            # () then SETITEMS, as Python 3 writes it; or one list of pairs (older picklers)
            if argv and (len(argv) != 1 or argv[0].kind not in ("list", "tuple")):
                self.fail("call", f"{name} with arguments other than a list of pairs")
            node = self.new("mapping")
            self.link(node, argv)
            return node
        if kind == "namespace":
            if argv:
                self.fail("call", f"{name} with arguments")
            return self.new("namespace")
        if kind == "torch_rebuild_tensor":
            return self.rebuild_tensor(name, argv)
        if kind == "torch_rebuild_parameter":
            if len(argv) not in (3, 4) or argv[0].kind != "tensor":
                self.fail("call", f"{name} of anything but a tensor")
            node = self.new("tensor")
            self.link(node, argv)
            return node
        self.fail("call", f"calling {name}")

    def rebuild_tensor(self, name: str, argv: list[_Node]) -> _Node:
        if len(argv) < 4 or argv[0].kind != "storage":
            self.fail("call", f"{name} of anything but a storage")
        storage, offset = argv[0], argv[1]
        size = self.ints(argv[2], f"{name} size")
        stride = self.ints(argv[3], f"{name} stride")
        if offset.kind != "int" or not isinstance(offset.value, int) or offset.value < 0:
            self.fail("call", f"{name} offset is not a non-negative integer")
        if len(size) != len(stride):
            self.fail("call", f"{name} size {size} and stride {stride} differ in length")
        numel, capacity = math.prod(size), storage.info
        extent = offset.value + sum((s - 1) * st for s, st in zip(size, stride, strict=True)) + 1
        if numel and (numel > capacity or extent > capacity):
            self.fail(
                "storage",
                f"a tensor of shape {tuple(size)} (stride {tuple(stride)}, offset "
                f"{offset.value}) does not fit its storage of {capacity:,} elements",
            )
        node = self.new("tensor")
        self.link(node, argv)
        return node

    def storage(self, pid: _Node) -> _Node:
        items = self.items(pid)
        # zip files: ('storage', type, key, location, numel); legacy files add view metadata
        if (
            pid.kind != "tuple"
            or len(items) not in (5, 6)
            or items[0].value != "storage"
            or items[1].kind != "global"
            or items[1].info.kind != "torch_storage"
            or items[2].kind != "str"
            or not isinstance(items[2].value, str)
            or items[4].kind != "int"
            or not isinstance(items[4].value, int)
            or items[4].value < 0
        ):
            self.fail("call", "a persistent id that is not a torch storage")
        key, numel = items[2].value, items[4].value
        nbytes = numel * items[1].info.itemsize
        self.storages[key] = max(self.storages.get(key, 0), nbytes)
        return self.new("storage", info=numel)

    def build(self, inst: _Node, state: _Node) -> None:
        if inst.kind == "ndarray":
            self.build_array(inst, state)
        elif inst.kind == "dtype":
            items = self.items(state)
            # (version, endian, subarray, names, fields, elsize, alignment, flags[, metadata])
            if (
                state.kind != "tuple"
                or len(items) not in (8, 9)
                or any(i.kind != "none" for i in items[2:5])
                or items[5].value not in (-1, inst.info.itemsize)
            ):
                self.fail("call", "a numpy dtype state that changes its layout")
        elif inst.kind in ("mapping", "namespace") and state.kind in ("dict", "none"):
            pass
        else:
            self.fail("call", f"BUILD of {self.name(inst)} with {self.name(state)}")
        self.link(inst, [state])

    def build_array(self, inst: _Node, state: _Node) -> None:
        items = self.items(state)
        if state.kind != "tuple" or len(items) not in (4, 5):
            self.fail("call", "a numpy array state that is not (shape, dtype, ..., data)")
        shape_node, dtype_node, raw = items[-4], items[-3], items[-1]
        shape = self.ints(shape_node, "numpy array shape")
        if dtype_node.kind != "dtype":
            self.fail("call", "a numpy array state without a checked dtype")
        dtype, count = dtype_node.info, math.prod(shape)
        if dtype.kind == "O":
            if raw.kind != "list" or len(self.items(raw)) != count:
                # numpy allocates the whole shape before it looks at the items
                self.fail("call", f"an object array of shape {tuple(shape)}")
        elif raw.kind not in _BYTES or raw.size != count * dtype.itemsize:
            self.fail(
                "call",
                f"a numpy array of shape {tuple(shape)} and dtype {dtype} whose data "
                f"is not {count * dtype.itemsize:,} bytes",
            )
        self.charge(count * dtype.itemsize, f"a numpy array of shape {tuple(shape)}")

    # ----------------------------------------------------------------- depth

    def check_depth(self) -> None:
        """Longest containment chain over every object built, iteratively; cycles refused."""
        limit, deepest = self.limits.max_depth, 0
        for root in self.nodes:
            if root.depth >= 0:
                continue
            root.depth = -2  # on the current path
            path: list[tuple[_Node, int]] = [(root, 0)]
            while path:
                node, i = path[-1]
                children = node.children or ()
                if i < len(children):
                    path[-1] = (node, i + 1)
                    child = children[i]
                    if child.depth == -2:
                        self.fail("depth", "the pickle builds a reference cycle")
                    if child.depth < 0:
                        child.depth = -2
                        path.append((child, 0))
                        if len(path) > limit:
                            self.fail("depth", f"objects nested deeper than {limit}")
                    continue
                node.depth = 1 + max((c.depth for c in children), default=0)
                if node.depth > limit:
                    self.fail("depth", f"objects nested deeper than {limit}")
                deepest = max(deepest, node.depth)
                path.pop()
        self.deepest = deepest


_STOP = object()


def scan_pickle(
    data: bytes | IO[bytes],
    source: str,
    allowed: Mapping[tuple[str, str], AllowedGlobal],
    *,
    limits: PickleLimits | None = None,
    input_size: int | None = None,
    refusal: str = "it is not on this reader's allow-list",
    persistent: bool = False,
) -> PickleScan:
    """Check one pickle without running it; raise :class:`UnsafePickleError` if it is unsafe.

    Args:
        data: the pickle, or a binary file positioned at its start (left just after its STOP).
        source: the file name for messages.
        allowed: ``(module, name) -> AllowedGlobal``: the only globals the pickle may name.
        limits: the bounds; :class:`PickleLimits` defaults when ``None``.
        input_size: what the byte budget is tied to; ``len(data)`` when ``data`` is bytes.
        refusal: why a global outside ``allowed`` is refused, for the message.
        persistent: accept torch storage persistent ids (``.pth`` files).
    """
    limits = limits or PickleLimits()
    if isinstance(data, (bytes, bytearray, memoryview)):
        input_size = len(data) if input_size is None else input_size
        stream: IO[bytes] = io.BytesIO(data)
    else:
        if input_size is None:
            raise ValueError("input_size is needed when scanning a file object")
        stream = _CappedReader(data, input_size)
    scanner = _Scanner(source, allowed, limits, input_size, refusal, persistent)
    try:
        end = scanner.run(pickletools.genops(stream))
    except UnsafePickleError:
        raise
    except (ValueError, EOFError, OverflowError, UnicodeDecodeError) as e:
        raise UnsafePickleError(source, "format", f"not a well-formed pickle ({e})") from e
    return PickleScan(end, scanner.used, scanner.count, scanner.deepest, scanner.storages)


class _CappedReader:
    """A file view for :func:`pickletools.genops` that never reads past ``size``: a buffered
    ``read(n)`` allocates ``n`` bytes before it reads, and ``n`` is what the pickle claims."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self.f, self.size = f, size

    def read(self, n: int = -1) -> bytes:
        left = max(0, self.size - self.f.tell())
        return self.f.read(left if n < 0 or n > left else n)

    def readline(self) -> bytes:
        return self.f.readline(max(0, self.size - self.f.tell()))

    def tell(self) -> int:
        return self.f.tell()


# --------------------------------------------------------------------------- run-time guards


def _guarded_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    if not isinstance(text, str) or str(encoding).lower() not in _LATIN1:
        raise pickle.UnpicklingError("_codecs.encode is allowed only as (text, 'latin1')")
    return codecs.encode(text, "latin1", errors)


def _guarded_dtype(code: Any, *args: Any) -> np.dtype:
    if not isinstance(code, (str, bytes)) or len(code) > _MAX_CODE_LEN:
        raise pickle.UnpicklingError("numpy.dtype is allowed only with a dtype code")
    dtype = np.dtype(code.decode("latin-1") if isinstance(code, bytes) else code, *args)
    if dtype.kind not in _NUMPY_DTYPE_KINDS or dtype.shape or dtype.fields:
        raise pickle.UnpicklingError(f"numpy dtype {dtype} is not a plain numeric dtype")
    return dtype


def _guarded_reconstruct(budget: int) -> Any:
    real = _numpy_reconstruct()

    def reconstruct(cls: Any, shape: Any, code: Any) -> np.ndarray:
        count = math.prod(int(s) for s in shape)
        if cls is not np.ndarray or count * _guarded_dtype(code).itemsize > budget:
            raise pickle.UnpicklingError("numpy _reconstruct outside what numpy writes")
        return real(cls, shape, code)

    return reconstruct


class _BoundedUnpickler(pickle.Unpickler):
    """Resolves only the allow-list, to run-time-guarded callables; no persistent ids."""

    def __init__(
        self,
        file: IO[bytes],
        source: str,
        allowed: Mapping[tuple[str, str], AllowedGlobal],
        refusal: str,
        budget: int,
        encoding: str,
    ) -> None:
        super().__init__(file, encoding=encoding)
        self.source, self.allowed, self.refusal, self.budget = source, allowed, refusal, budget

    def find_class(self, module: str, name: str) -> Any:
        entry = self.allowed.get((module, name))
        if entry is None or entry.obj is None:
            raise UnsafePickleError(
                self.source,
                "global",
                f"refusing global {module}.{name}; {self.refusal}",
                global_name=f"{module}.{name}",
            )
        if entry.kind == "encode":
            return _guarded_encode
        if entry.kind == "np_dtype":
            return _guarded_dtype
        if entry.kind == "np_reconstruct":
            return _guarded_reconstruct(self.budget)
        return entry.obj


def load_pickle(
    data: bytes,
    source: str,
    allowed: Mapping[tuple[str, str], AllowedGlobal],
    *,
    encoding: str = "ASCII",
    limits: PickleLimits | None = None,
    refusal: str = "it is not on this reader's allow-list",
) -> Any:
    """Unpickle ``data`` after :func:`scan_pickle` has found it bounded and allow-listed.

    Args:
        data: the whole pickle.
        source: the file name for messages.
        allowed: ``(module, name) -> AllowedGlobal``, e.g. ``NUMPY_ARRAY_GLOBALS``.
        encoding: how protocol-0/1 ``STRING`` data is decoded (``"bytes"`` for Python 2 files).
        limits: the bounds; :class:`PickleLimits` defaults when ``None``.
        refusal: why a global outside ``allowed`` is refused, for the message.

    Raises:
        UnsafePickleError: the scan refused the pickle (``error.bound`` says why).
        pickle.UnpicklingError, ValueError, TypeError, ...: the pickle is malformed in a way
            only running it shows (e.g. array data of the wrong length).
    """
    limits = limits or PickleLimits()
    scan_pickle(data, source, allowed, limits=limits, refusal=refusal)
    budget = limits.byte_budget(len(data))
    unpickler = _BoundedUnpickler(io.BytesIO(data), source, allowed, refusal, budget, encoding)
    return unpickler.load()
