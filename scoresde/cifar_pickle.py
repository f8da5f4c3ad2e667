"""Checking a CIFAR-10 python batch's pickle on its opcodes alone, before anything is unpickled.

`pickletools.genops` reads the opcodes (a linear scan that builds nothing); `check_cifar_pickle`
follows them on stand-in nodes to learn what the pickle would build: which globals it names, how
deep it nests, and how many objects it would make with shared references counted each time. A
pickle of a few kilobytes can otherwise describe gigabytes (a list of references to one list) or
dict keys whose hashing takes minutes (a tuple of two references to a tuple of two ...).
`scoresde.data` then loads a passing pickle with an unpickler that builds only CIFAR_GLOBALS.
"""

from __future__ import annotations

import pickletools

__all__ = ["CIFAR_GLOBALS", "MAX_PICKLE_DEPTH", "MAX_PICKLE_NODES", "check_cifar_pickle"]

# what a CIFAR batch names: numpy arrays, their dtypes and scalars, and latin-1 strings (protocol 2)
CIFAR_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
})
# Bounds on a CIFAR batch's pickle, checked on its opcodes before anything is built (a real batch:
# ~31 MB, a dict of 4 entries, two lists of 10,000 items, nesting 4 deep).
MAX_PICKLE_DEPTH = 8
MAX_PICKLE_NODES = 1_000_000  # objects the pickle would build, shared references counted each time
MAX_KEY_NODES = 8  # a dict key: a string, or _codecs.encode(string, "latin1") in protocol-2 files
_PICKLE_LEAVES = frozenset({
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "NONE", "NEWTRUE", "NEWFALSE", "FLOAT",
    "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
    "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
})
_NUMPY_DTYPES = frozenset({"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f4", "f8", "b1"})


class _Node:
    """What one pickled object would be: its children (shared nodes are shared) and, for short
    strings, the value (to check globals and dtypes)."""

    __slots__ = ("children", "value")

    def __init__(self, children=(), value=None):
        self.children, self.value = list(children), value


def _since_mark(stack: list, marks: list) -> list:
    if not marks:
        raise ValueError("an opcode needs a MARK and there is none")
    m = marks.pop()
    items = stack[m:]
    del stack[m:]
    return items


def _pickle_graph(raw: bytes) -> _Node:
    """The object graph of a pickle, built from its opcodes alone (nothing is constructed or called);
    ValueError for opcodes or globals a CIFAR batch does not use."""
    stack: list[_Node] = []
    marks: list[int] = []
    memo: dict[int, _Node] = {}
    for op, arg, _ in pickletools.genops(raw):
        name = op.name
        if name in ("PROTO", "FRAME", "STOP"):
            continue
        if name in _PICKLE_LEAVES:
            short = isinstance(arg, (str, bytes)) and len(arg) <= 64
            stack.append(_Node(value=(arg.decode("latin1") if isinstance(arg, bytes) else arg) if short else None))
        elif name == "MARK":
            marks.append(len(stack))
        elif name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_TUPLE"):
            stack.append(_Node())
        elif name in ("LIST", "TUPLE", "DICT"):
            items = _since_mark(stack, marks)
            if name == "DICT":
                _check_keys(items[0::2])
            stack.append(_Node(items))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = stack[-n:]
            del stack[-n:]
            stack.append(_Node(items))
        elif name in ("APPEND", "BUILD"):
            item = stack.pop()
            stack[-1].children.append(item)
        elif name == "APPENDS":
            items = _since_mark(stack, marks)
            stack[-1].children.extend(items)
        elif name in ("SETITEM", "SETITEMS"):
            items = stack[-2:] if name == "SETITEM" else _since_mark(stack, marks)
            if name == "SETITEM":
                del stack[-2:]
            _check_keys(items[0::2])
            stack[-1].children.extend(items)
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            memo[len(memo) if name == "MEMOIZE" else int(arg)] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo[int(arg)])
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            if name == "GLOBAL":
                module, attr = arg.split(" ", 1)
            else:
                module, attr = (n.value for n in stack[-2:])
                del stack[-2:]
            if (module, attr) not in CIFAR_GLOBALS:
                raise ValueError(f"refusing to load {str(module)[:60]}.{str(attr)[:60]} (not part of a CIFAR batch)")
            stack.append(_Node(value=f"{module}.{attr}"))
        elif name == "REDUCE":
            args, func = stack.pop(), stack.pop()
            if func.value == "numpy.dtype" and (not args.children or args.children[0].value not in _NUMPY_DTYPES):
                raise ValueError("refusing a numpy dtype other than a plain number type")
            stack.append(_Node([func, args]))
        elif name in ("POP", "DUP", "POP_MARK"):
            if name == "POP":
                stack.pop()
            elif name == "DUP":
                stack.append(stack[-1])
            else:
                _since_mark(stack, marks)
        else:
            raise ValueError(f"refusing pickle opcode {name} (not part of a CIFAR batch)")
    if len(stack) != 1:
        raise ValueError("the pickle does not leave exactly one object")
    return stack[0]


def _check_keys(keys: list[_Node]) -> None:
    for k in keys:
        if _graph_size(k, MAX_KEY_NODES, MAX_PICKLE_DEPTH)[0] > MAX_KEY_NODES:
            raise ValueError(f"a dict key of more than {MAX_KEY_NODES} objects (CIFAR keys are strings)")


def _graph_size(root: _Node, max_nodes: int, max_depth: int) -> tuple[int, int]:
    """(objects, depth) of the tree the graph unfolds to, counting up to just past max_nodes; ValueError
    for a cycle or a depth over max_depth. Iterative, linear in the graph's size."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    todo = [(root, False)]
    while todo:
        node, done = todo.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            kids = node.children
            size[key] = min(max_nodes + 1, 1 + sum(size[id(c)] for c in kids))
            depth[key] = 1 + max((depth[id(c)] for c in kids), default=0)
            if depth[key] > max_depth:
                raise ValueError(f"objects nested more than {max_depth} deep")
            continue
        if key in size:
            continue
        if key in on_path:
            raise ValueError("a pickled object contains itself")
        on_path.add(key)
        todo.append((node, True))
        todo.extend((c, False) for c in node.children if id(c) not in size)
    return size[id(root)], depth[id(root)]


def check_cifar_pickle(raw: bytes) -> None:
    """Refuse, from the opcodes alone, a pickle that would build more than a CIFAR batch holds."""
    n, _ = _graph_size(_pickle_graph(raw), MAX_PICKLE_NODES, MAX_PICKLE_DEPTH)
    if n > MAX_PICKLE_NODES:
        raise ValueError(f"the pickle would build more than {MAX_PICKLE_NODES:,} objects")
