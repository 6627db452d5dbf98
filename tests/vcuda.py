"""A "virtual CUDA" device for tests: the package believes one CUDA GPU is present while everything runs on the CPU;
the harness tracks which tensors are on the virtual GPU and raises where real CUDA refuses to mix devices.

    with VirtualCuda() as vc: ...   # VirtualCuda(free_bytes=..., total_bytes=..., max_tensor_bytes=...)

How it works
------------
A TorchFunctionMode (torch's Python API) rewrites a ``device=`` keyword naming CUDA (``'cuda'``, ``'cuda:0'``,
``torch.device('cuda')``, ``0``) of factories, ``*_like`` and ``new_*``, and the target of ``Tensor.to`` / ``.cuda()`` /
``.cpu()`` (positional too), to the CPU, and marks the result as on the virtual GPU (an attribute on the tensor; ``.to``
of an unmarked tensor always copies, as a real move does). It answers ``Tensor.device`` (``cuda:0``), ``is_cuda``,
``is_cpu`` and ``get_device()`` for marked tensors, carries the mark through ``.data`` (get and set: how ``nn.Module.to``
moves parameters) and ``nn.Parameter(t)``, refuses a CPU ``.grad`` for a marked tensor, and refuses ``.numpy()`` /
``np.asarray`` of a marked tensor (TypeError, as CUDA).

A TorchDispatchMode (ATen operators, below autograd and torch.func: backward passes, vmap, vjp and jvp are seen op by op)
carries the mark from inputs to outputs and checks each operator's arguments as its CUDA kernel would, by the
``device_check`` of torchgen's native_functions.yaml:

* ``ExactSame`` (the default) with a dense CUDA kernel: every tensor argument on one device, 0-dim CPU tensors included
  (mm, bmm, addmm, cat, index_select, gather, scatter, index_add, searchsorted, nonzero, equal, ...);
* ``NoCheck`` (TensorIterator ops; foreach ops per list position) and ops without a CUDA kernel of their own: a 0-dim CPU
  tensor may be an input (a "CPU scalar"), never a written (in-place / out=) argument; no other CPU tensor;
* indexing (index, index_put_): CPU indices are allowed on a CUDA tensor, CUDA indices on a CPU tensor are not; a 0-dim
  value of either device may be put (it is moved), a larger one must be on the indexed tensor's device;
* ``copy_`` (also ``x[i] = t``) crosses devices; view_as / expand_as / reshape_as / broadcast_tensors read shapes only;
  ``set_`` gives the destination the source's device.

Tensors torch's internals make with no tensor input (autograd's and torch.func's zero tangents, Python scalars wrapped
as tensors, tensors made inside torch's own Python functions, where the function mode is off) are marked "any": they
take the device of what they meet and raise nothing themselves. Package code's own torch calls always pass the
function mode, so a tensor it makes without a device is on the CPU.

torch.cuda and the rest
-----------------------
is_available -> True, device_count -> 1, current_device -> 0; synchronize, empty_cache, reset_peak_memory_stats: no-ops;
current_stream / default_stream (and ``torch.accelerator.current_stream``, which ``optimizer.step`` asks): a stream
that never captures; mem_get_info -> (free_bytes, total_bytes), 70 and 80 GiB unless given; memory_allocated & co -> 0;
get_device_name, get_device_capability. The GPU's RNG (manual_seed[_all], seed[_all], initial_seed,
get/set_rng_state[_all]) is a CPU generator of its own: random factories on the GPU draw from it (the CPU stream is left
alone, as on a GPU), a CPU ``generator=`` for a GPU draw raises as CUDA does, and ``torch.random.fork_rng(devices=[0])``
forks it. ``torch.save`` writes a marked tensor's storage with a GPU's location tag (``'cuda:0'``): ``torch.load`` puts it
back on the virtual GPU (without map_location; with one naming CUDA every tensor goes there), and outside the harness
such a file needs ``map_location``, as a GPU's does on a CPU-only machine. ``max_tensor_bytes``: a larger tensor made on
the GPU raises torch.OutOfMemoryError. Everything patched is restored on exit, and so are the GPU-only switches code may
flip for the process (``torch.backends.cudnn.allow_tf32 / deterministic / benchmark``, ``cuda.matmul.allow_tf32``).

What it cannot emulate (these run as on the CPU, or fail loudly; nothing is faked as working)
--------------------------------------------------------------------------------------------
* numerics: CUDA's kernels, reduction orders, TF32, cuBLAS/cuSOLVER and nondeterminism. The numbers are the CPU's, so a
  CPU/"cuda" comparison is exact here where a GPU's agrees to rounding only;
* memory: mem_get_info is a constant, not what is allocated; out-of-memory only as a per-tensor cap; no fragmentation;
* asynchrony: streams, events, non_blocking copies, pinned memory. ``torch.cuda.Stream``, ``Event``,
  ``torch.cuda.device(...)``, ``torch.Generator(device='cuda')`` are not patched: torch's own "no NVIDIA driver" error;
* per-kernel exceptions to the rules above (a NoCheck kernel may accept or refuse more than the rule says; an op without
  a CUDA kernel is checked by the lenient rule, its inner ops being out of sight);
* a second GPU (``cuda:1`` raises "invalid device ordinal"); ``torch.save`` finds marked tensors in dicts, lists and
  tuples only (not inside other objects), and not empty ones; ``repr`` shows no device;
* code reaching CUDA without torch's Python API (C++ extensions, torch.compile / inductor, custom Tensor subclasses).
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ['VirtualCuda', 'on_virtual_cuda', 'vstate', 'VirtualCudaError']

_ATTR = '_vcuda_device'  # 'cuda' (on the virtual GPU) or 'any' (made by torch's internals: takes its partners' device); absent: CPU
CUDA0 = torch.device('cuda', 0)
_ft = torch._C._functorch


class VirtualCudaError(RuntimeError):
    "A device mix that real CUDA would refuse (a RuntimeError, as torch's own)."


def vstate(t):
    "'cuda', 'any' or None (CPU) for a tensor; a torch.func wrapper has its innermost tensor's."
    while True:
        s = t.__dict__.get(_ATTR) if hasattr(t, '__dict__') else None
        if s is not None or not _ft.is_functorch_wrapped_tensor(t): return s
        t = _ft.get_unwrapped(t)


def on_virtual_cuda(t) -> bool:
    "Whether `t` is on the virtual GPU."
    return isinstance(t, torch.Tensor) and vstate(t) == 'cuda'


def _mark(t, s):
    if s is None: t.__dict__.pop(_ATTR, None)
    else: setattr(t, _ATTR, s)


def _tensors(tree, out=None):
    "The tensors in nested tuples, lists and dicts (a light tree_flatten: this runs on every call)."
    out = [] if out is None else out
    if isinstance(tree, torch.Tensor): out.append(tree)
    elif isinstance(tree, (list, tuple)):
        for x in tree: _tensors(x, out)
    elif isinstance(tree, dict):
        for x in tree.values(): _tensors(x, out)
    return out


def _cuda_spec(d):
    "True for a device spec naming CUDA (raising for an ordinal the one virtual GPU lacks), False for another device, None for none."
    if d is None: return None
    if isinstance(d, (str, int)) and not isinstance(d, bool): d = torch.device(d)
    if not isinstance(d, torch.device): return None
    if d.type != 'cuda': return False
    if d.index not in (None, 0): raise VirtualCudaError(f'CUDA error: invalid device ordinal ({d}: the virtual machine has one GPU, cuda:0)')
    return True


def _mix_error(func, what):
    return VirtualCudaError(f'[virtual CUDA] Expected all tensors to be on the same device, but found at least two devices, '
                            f'cuda:0 and cpu! ({func}: {what})')


# ---------------------------------------------------------------- the operators' device rules (from native_functions.yaml)

@functools.lru_cache(None)
def _yaml_rules() -> dict:
    "op name ('add.Tensor', 'mm') -> 'same' (codegen check on all tensor args), 'nocheck' or 'composite' (no dense CUDA kernel)."
    import torchgen
    import yaml
    path = Path(torchgen.__file__).parent / 'packaged' / 'ATen' / 'native' / 'native_functions.yaml'
    entries = yaml.load(path.read_text(), Loader=getattr(yaml, 'CSafeLoader', yaml.SafeLoader))
    by = {e['func'].split('(')[0]: e for e in entries}

    def has_cuda(e, depth=0):
        keys = {k.strip() for key in (e.get('dispatch') or {}) for k in key.split(',')}
        if 'CUDA' in keys: return True
        d = e.get('structured_delegate')
        return bool(d) and d in by and depth < 3 and has_cuda(by[d], depth + 1)
    return {n: 'nocheck' if e.get('device_check') == 'NoCheck' else 'same' if has_cuda(e) else 'composite' for n, e in by.items()}


_COPY = {'copy_', '_copy_from', '_copy_from_and_resize', '_foreach_copy_', '_foreach_copy', '_to_copy', 'to', 'lift_fresh',
         'lift_fresh_copy', 'lift', 'copy'}
_SHAPE_ONLY = {'view_as', 'expand_as', 'reshape_as', 'is_same_size', 'is_set_to', 'broadcast_tensors', 'resize_as_'}
_INDEX = {'index', 'index_put', 'index_put_', '_index_put_impl_', '_unsafe_index', '_unsafe_index_put', '_index_put_impl'}
_SET = {'set_'}


class _OpInfo:
    "What the dispatch mode needs of an operator, computed once."
    def __init__(self, func):
        s = func._schema
        self.base = s.name.split('::')[-1]
        self.name = f'{self.base}.{s.overload_name}' if s.overload_name else self.base
        ns = s.name.split('::')[0]
        self.rule = _yaml_rules().get(self.name, 'composite') if ns == 'aten' else 'composite'
        self.args = [(a.name, a.kwarg_only, bool(a.alias_info and a.alias_info.is_write)) for a in s.arguments]
        self.generator = any(a.name == 'generator' for a in s.arguments)
        self.device = any(a.name == 'device' for a in s.arguments)
        self.foreach = self.base.startswith('_foreach_')

    def bound(self, args, kwargs):
        "(name, value, written) of every argument given."
        out = []
        for i, (n, kw, w) in enumerate(self.args):
            if not kw and i < len(args): out.append((n, args[i], w))
            elif n in kwargs: out.append((n, kwargs[n], w))
        return out


class _DispatchMode(TorchDispatchMode):
    def __init__(self, vc):
        super().__init__()
        self.vc, self.infos = vc, {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        info = self.infos.get(func) or self.infos.setdefault(func, _OpInfo(func))
        with torch._C.DisableTorchFunction():
            forced = None
            if info.device and _cuda_spec(kwargs.get('device')):  # a CUDA device reaching ATen without passing the function mode
                kwargs['device'], forced = torch.device('cpu'), 'cuda'
            elif info.base == '_to_copy' and _cuda_spec(kwargs.get('device')) is False: forced = 'cpu'  # an explicit move to the CPU
            bound = info.bound(args, kwargs)
            ins = [(n, t, w) for n, v, w in bound for t in (v if isinstance(v, (list, tuple)) else [v]) if isinstance(t, torch.Tensor)]
            self._check(func, info, bound, ins)
            states = [vstate(t) for _, t, _ in ins]
            st = forced or ('cuda' if 'cuda' in states else None if any(s is None for s in states) else 'any')
            if info.generator and st == 'cuda': self.vc._device_generator(kwargs, func)
            out = func(*args, **kwargs)
            if forced is None and info.base in _SHAPE_ONLY and ins:
                if info.base == 'broadcast_tensors':
                    for o, (_, t, _) in zip(out, ins): _mark(o, vstate(t))
                    return out
                st = vstate(ins[0][1])
            if info.base in _SET and len(ins) > 1: _mark(ins[0][1], vstate(ins[1][1])); return out
            if info.base in _COPY and info.base.endswith('_'):  # copy_: the destination keeps its device ('any' takes the source's)
                if vstate(ins[0][1]) == 'any' and len(ins) > 1: _mark(ins[0][1], vstate(ins[1][1]))
                return out
            same = {id(t) for _, t, _ in ins}
            for o in _tensors(out):
                if id(o) not in same:
                    _mark(o, st)
                    if st == 'cuda': self.vc._allocated(o, func)
                elif vstate(o) == 'any' and st != 'any': _mark(o, st)
        return out

    def _check(self, func, info, bound, ins):
        if info.base in _COPY or info.base in _SHAPE_ONLY or info.base in _SET or len(ins) < 2: return
        if info.base in _INDEX:
            self_t = ins[0][1]
            if vstate(self_t) is None and any(n == 'indices' and vstate(t) == 'cuda' for n, t, _ in ins):
                raise VirtualCudaError(f'[virtual CUDA] indices should be either on cpu or on the same device as the indexed tensor (cpu) ({func})')
            # the indices may stay on the CPU; a 0-dim value is moved to self's device first (_index_put_impl_)
            ins = [x for x in ins if x[0] != 'indices' and not (x[0] == 'values' and x[1].dim() == 0)]
            groups, rule = [ins], 'nocheck'
        elif info.foreach:  # one group per list position (foreach kernels fall back to one op a position)
            lists = [(n, v, w) for n, v, w in bound if isinstance(v, (list, tuple))]
            scal = [(n, v, w) for n, v, w in bound if isinstance(v, torch.Tensor)]
            groups = [[(n, v[i], w) for n, v, w in lists if i < len(v) and isinstance(v[i], torch.Tensor)] + scal
                      for i in range(max((len(v) for _, v, _ in lists), default=0))]
            rule = 'nocheck'
        else: groups, rule = [ins], info.rule
        for g in groups:
            st = [(n, t, w, vstate(t)) for n, t, w in g]
            if not any(s == 'cuda' for *_, s in st): continue
            cpu = [(n, t, w) for n, t, w, s in st if s is None]
            if not cpu: continue
            if rule == 'same':
                raise _mix_error(func, f"argument '{cpu[0][0]}' is on the CPU; this kernel checks that every tensor argument is on one device")
            for n, t, w in cpu:
                if w: raise _mix_error(func, f"the written argument '{n}' is on the CPU")
                if t.dim() != 0: raise _mix_error(func, f"argument '{n}' (shape {tuple(t.shape)}) is on the CPU; only 0-dim CPU tensors pass as scalars")


# ---------------------------------------------------------------- the Python API level

class _FunctionMode(TorchFunctionMode):
    def __init__(self, vc):
        super().__init__()
        self.vc = vc
        T = torch.Tensor
        self.getters = {T.device: self._device, T.is_cuda: lambda t, f, a: vstate(t) == 'cuda' or f(*a),
                        T.is_cpu: lambda t, f, a: False if vstate(t) == 'cuda' else f(*a),
                        T.data: self._data_get, T.grad: self._grad_get}
        self.setters = {T.data: self._data_set, T.grad: self._grad_set}
        self.methods = {T.to: self._to, T.cuda: self._cuda, T.cpu: self._cpu, T.numpy: self._numpy, T.__array__: self._array,
                        T.get_device: lambda f, a, k: 0 if vstate(a[0]) == 'cuda' else f(*a, **k),
                        T.__deepcopy__: self._deepcopy}
        self.fresh = {torch.as_tensor, torch.asarray}  # may share memory with their input on the CPU: a GPU copy is fresh
        self.passthrough = {torch._C._nn._parse_to}  # takes a device= but only parses it (nn.Module.to)
        self.random = {torch.rand, torch.randn, torch.randint, torch.randperm, torch.normal, torch.bernoulli, torch.multinomial, torch.poisson}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        owner = getattr(func, '__self__', None)
        if owner is not None and type(owner).__name__ == 'getset_descriptor':
            if func.__name__ == '__get__' and owner in self.getters: return self.getters[owner](args[0], func, args)
            if func.__name__ == '__set__' and owner in self.setters: return self.setters[owner](func, args)
            return func(*args, **kwargs)
        if func in self.methods: return self.methods[func](func, args, kwargs)
        return self._generic(func, args, kwargs)

    # getters and setters
    def _device(self, t, f, a): return CUDA0 if vstate(t) == 'cuda' else f(*a)

    def _data_get(self, t, f, a):
        out = f(*a); _mark(out, vstate(t)); return out

    def _grad_get(self, t, f, a):
        out = f(*a)
        if out is not None and vstate(out) == 'any': _mark(out, vstate(t))
        return out

    def _data_set(self, f, a):
        f(*a); _mark(a[0], vstate(a[1]))

    def _grad_set(self, f, a):
        t, g = a[0], a[1]
        if g is not None and (vstate(t) == 'cuda') != (vstate(g) == 'cuda') and 'any' not in (vstate(t), vstate(g)):
            raise VirtualCudaError(f"[virtual CUDA] assigned grad has data located on {'cuda:0' if vstate(g) == 'cuda' else 'cpu'}, "
                                   f"different from the tensor's ({'cuda:0' if vstate(t) == 'cuda' else 'cpu'})")
        f(*a)

    # methods
    def _numpy(self, f, a, k):
        if vstate(a[0]) == 'cuda' and not k.get('force', False):
            raise TypeError("[virtual CUDA] can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to host memory first.")
        return f(*a, **k)

    def _array(self, f, a, k):
        if vstate(a[0]) == 'cuda':
            raise TypeError("[virtual CUDA] can't convert cuda:0 device type tensor to numpy (np.asarray / np.array). Use Tensor.cpu() first.")
        return f(*a, **k)

    def _deepcopy(self, f, a, k):
        out = f(*a, **k); _mark(out, vstate(a[0])); return out

    def _moved(self, t, out, target):
        "The result of moving `t` to `target` ('cuda' or None: CPU): a new tensor unless `t` is there already."
        if target == vstate(t) or (target is None and vstate(t) == 'any'):
            if target == 'cuda': _mark(out, 'cuda')
            return out
        if out is t: out = t.clone()
        _mark(out, target)
        if target == 'cuda': self.vc._allocated(out, 'Tensor.to')
        return out

    def _to(self, f, a, k):
        t, rest = a[0], list(a[1:])
        if rest and isinstance(rest[0], torch.Tensor): target = vstate(rest[0]) == 'cuda' or None
        else:
            kk = {n: v for n, v in k.items() if n != 'copy'}
            device = torch._C._nn._parse_to(*rest, **kk)[0]
            target = _cuda_spec(device)
            if target is not None:
                rest = ['cpu' if _cuda_spec(x) else x for x in rest] if 'device' not in k else rest
                if 'device' in k: k['device'] = 'cpu'
        out = f(t, *rest, **k)
        if target is None and not (rest and isinstance(rest[0], torch.Tensor)): return out  # a dtype change: propagated by the dispatch mode
        return self._moved(t, out, 'cuda' if target else None)

    def _cuda(self, f, a, k):
        t = a[0]
        dev = k.get('device', a[1] if len(a) > 1 else None)
        if dev is not None: _cuda_spec(dev if not isinstance(dev, int) else torch.device('cuda', dev))
        mf = k.get('memory_format', torch.preserve_format)
        return self._moved(t, t if vstate(t) == 'cuda' else t.clone(memory_format=mf), 'cuda')

    def _cpu(self, f, a, k):
        t = a[0]
        return self._moved(t, f(*a, **k), None)

    # everything else: factories and device= arguments
    def _generic(self, func, args, kwargs):
        target = None
        if 'device' in kwargs and func not in self.passthrough:
            target = _cuda_spec(kwargs['device'])
            if target: kwargs['device'] = torch.device('cpu')
        if target and func in self.random: self.vc._device_generator(kwargs, func)
        out = func(*args, **kwargs)
        if target is None:
            if not (args and isinstance(args[0], torch.Tensor)) and not _tensors((args, kwargs)):
                for o in _tensors(out):  # a factory called without a device: the CPU (the default device)
                    if vstate(o) == 'any': _mark(o, None)
            return out
        ins = _tensors((args, kwargs))
        if target and not isinstance(out, torch.Tensor) and _tensors(out):
            for o in _tensors(out): _mark(o, 'cuda')
            return out
        if isinstance(out, torch.Tensor):
            src = next((t for t in ins if t is out), None)
            if target and ((src is not None and vstate(src) != 'cuda') or (src is None and func in self.fresh)): out = out.clone()
            elif not target and src is not None and vstate(src) == 'cuda': out = out.clone()
            _mark(out, 'cuda' if target else None)
            if target: self.vc._allocated(out, func)
        return out


# ---------------------------------------------------------------- the torch.cuda stand-ins and the context manager

class _Stream:
    "The virtual GPU's one stream: everything on it is already done (the CPU ran it)."
    device = CUDA0
    def is_capturing(self): return False
    def synchronize(self): pass
    def query(self): return True
    def wait_stream(self, other): pass
    def __enter__(self): return self
    def __exit__(self, *exc): return False


class VirtualCuda:
    """Context manager: torch.cuda says one GPU is present; tensors "on" it live on the CPU, marked, and device mixes raise.
    Re-entrant use is refused; everything patched is restored on exit (also after an exception)."""
    GIB = 2 ** 30
    name = 'Virtual CUDA GPU (on the CPU)'

    def __init__(self, free_bytes: int = 70 * 2 ** 30, # what torch.cuda.mem_get_info reports free (a constant)
                 total_bytes: int = 80 * 2 ** 30, # and in all
                 max_tensor_bytes: int | None = None, # a larger tensor made on the virtual GPU raises torch.OutOfMemoryError (None: never)
                ):
        self.free, self.total, self.max_tensor_bytes = free_bytes, total_bytes, max_tensor_bytes
        self.gen = torch.Generator()  # the virtual GPU's generator
        self.gen.manual_seed(torch.initial_seed())
        self._saved, self._modes = [], None

    def _allocated(self, t, func):
        "A tensor just made on the virtual GPU: CUDA's out-of-memory error where it is over `max_tensor_bytes`."
        n = t.numel() * t.element_size()
        if self.max_tensor_bytes is not None and n > self.max_tensor_bytes:
            raise torch.OutOfMemoryError(f'CUDA out of memory. Tried to allocate {n} bytes ([virtual CUDA] max_tensor_bytes={self.max_tensor_bytes}; {func})')

    def _device_generator(self, kwargs, func):
        "Draws on the virtual GPU use its generator; a CPU generator given for them raises, as on CUDA."
        g = kwargs.get('generator')
        if g is None: kwargs['generator'] = self.gen
        elif g is not self.gen and g.device.type == 'cpu':
            raise VirtualCudaError(f"[virtual CUDA] Expected a 'cuda' device type for generator but found 'cpu' ({func})")

    def _patches(self):
        c, gen = torch.cuda, self.gen

        def dev_ok(device=None):
            if device is not None and not (isinstance(device, int) and device == 0): _cuda_spec(device if not isinstance(device, int) else torch.device('cuda', device))

        def get_rng_state(device='cuda'): dev_ok(device); return gen.get_state()

        def set_rng_state(new_state, device='cuda'): dev_ok(device); gen.set_state(new_state)

        def manual_seed(seed): gen.manual_seed(int(seed))

        orig_load, orig_save, orig_tag = torch.load, torch.save, torch.serialization.location_tag

        def load(f, map_location=None, *a, **k):
            "map_location naming CUDA: every tensor on the GPU; none: each where the file says (a GPU's file: 'cuda:0')."
            if isinstance(map_location, (str, torch.device, int)) and _cuda_spec(map_location):
                out = orig_load(f, 'cpu', *a, **k)
                for t in _tensors(out): _mark(t, 'cuda')
                return out
            if map_location is not None:
                out = orig_load(f, map_location, *a, **k)
                for t in _tensors(out): _mark(t, None)
                return out
            on_gpu = set()

            def restore(storage, location):
                if location.startswith('cuda'): _cuda_spec(location); on_gpu.add(storage.data_ptr())
                return storage
            out = orig_load(f, restore, *a, **k)
            for t in _tensors(out): _mark(t, 'cuda' if t.untyped_storage().data_ptr() in on_gpu else None)
            return out

        def save(obj, f, *a, **k):
            "As a GPU writes it: the storages of tensors on the virtual GPU tagged 'cuda:0' in the file."
            marked = [(t, t.__dict__.pop(_ATTR)) for t in _tensors(obj) if _ATTR in t.__dict__]  # (pickle would keep the mark: a tensor's __dict__ is saved)
            ptrs = {t.untyped_storage().data_ptr() for t, st in marked if st == 'cuda'} - {0}

            def tag(storage):
                u = storage._untyped_storage if isinstance(storage, torch.storage.TypedStorage) else storage
                return 'cuda:0' if u.data_ptr() in ptrs else orig_tag(storage)
            torch.serialization.location_tag = tag
            try: return orig_save(obj, f, *a, **k)
            finally:
                torch.serialization.location_tag = orig_tag
                for t, st in marked: _mark(t, st)
        make_subclass = torch._C.TensorBase._make_subclass

        def _make_subclass(cls, data, requires_grad=False, **kwargs):  # nn.Parameter(t) / Buffer(t): the new object keeps t's device
            out = make_subclass(cls, data, requires_grad, **kwargs); _mark(out, vstate(data)); return out
        return [
            (torch.Tensor, '_make_subclass', staticmethod(_make_subclass)),
            (c, 'is_available', lambda: True), (c, 'device_count', lambda: 1), (c, 'current_device', lambda: 0),
            (c, 'synchronize', lambda device=None: dev_ok(device)), (c, 'empty_cache', lambda: None),
            (c, 'mem_get_info', lambda device=None: (dev_ok(device), (self.free, self.total))[1]),
            (c, 'get_device_name', lambda device=None: (dev_ok(device), self.name)[1]),
            (c, 'get_device_capability', lambda device=None: (dev_ok(device), (9, 0))[1]),
            (c, 'memory_allocated', lambda device=None: 0), (c, 'max_memory_allocated', lambda device=None: 0),
            (c, 'memory_reserved', lambda device=None: 0), (c, 'max_memory_reserved', lambda device=None: 0),
            (c, 'reset_peak_memory_stats', lambda device=None: None),
            (c, 'manual_seed', manual_seed), (c, 'manual_seed_all', manual_seed),
            (c, 'seed', lambda: gen.seed()), (c, 'seed_all', lambda: gen.seed()), (c, 'initial_seed', lambda: gen.initial_seed()),
            (c, 'get_rng_state', get_rng_state), (c, 'set_rng_state', set_rng_state),
            (c, 'get_rng_state_all', lambda: [gen.get_state()]), (c, 'set_rng_state_all', lambda states: gen.set_state(list(states)[0])),
            (c, 'current_stream', lambda device=None: (dev_ok(device), _Stream())[1]),
            (c, 'default_stream', lambda device=None: (dev_ok(device), _Stream())[1]),
            (c, 'is_current_stream_capturing', lambda: False),
            (torch.accelerator, 'current_stream', lambda device=None: (dev_ok(device), _Stream())[1]),
            (torch.accelerator, 'current_device_index', lambda: 0), (torch.accelerator, 'device_count', lambda: 1),
            (torch.accelerator, 'synchronize', lambda device=None: dev_ok(device)),
            (torch, 'load', load), (torch, 'save', save),
        ]

    def __enter__(self):
        if self._modes is not None: raise RuntimeError('VirtualCuda is not re-entrant')
        _yaml_rules()
        import torch._dynamo  # noqa: F401  (imported lazily by torch otherwise, possibly while torch.Tensor._make_subclass is patched)
        for obj, name, new in self._patches():
            self._saved.append((obj, name, name in obj.__dict__, obj.__dict__.get(name)))
            setattr(obj, name, new)
        self._modes = (_DispatchMode(self), _FunctionMode(self))
        b = torch.backends  # GPU-only switches code may flip for the process (TF32, cuDNN's algorithms): put back on exit
        self._flags = (b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.deterministic, b.cudnn.benchmark, torch.get_float32_matmul_precision())
        for m in self._modes: m.__enter__()
        return self

    def __exit__(self, *exc):
        try:
            for m in reversed(self._modes): m.__exit__(*exc)
        finally:
            for obj, name, had, old in reversed(self._saved):
                if had: setattr(obj, name, old)
                else: delattr(obj, name)
            b = torch.backends
            b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.deterministic, b.cudnn.benchmark, prec = self._flags
            torch.set_float32_matmul_precision(prec)
            self._saved, self._modes = [], None
        return False
