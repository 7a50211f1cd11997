"""ExecuTorch int8 as a lowering of the export's ``QuantPlan``: PT2E with the plan's numbers, no calibration.

The torch module is the net every other format lowers (``plan.lowered_net(folded)``), built
from ``FoldedNet.walk`` with one submodule per plan tensor, named after it (``layers.conv_stem``,
``adds.blocks_1_1_add``, ``pool``), so every node ``torch.export`` traces carries the plan name
of the tensor it computes.  ``XNNPACKQuantizer`` annotates it as in ExecuTorch's own flow, so the
graph keeps XNNPACK's patterns (conv+ReLU fused, quantized add, ``mean.dim`` pooling, linear);
then every observer ``prepare_pt2e`` inserted is replaced by a fixed one holding the plan's grid
of the tensor it observes (int8 affine activations, per-channel symmetric weight scales), and
``convert_pt2e`` runs without a single calibration forward.  Biases stay float in the graph:
XNNPACK stores them as int32 at ``input scale x weight scale`` (``QuantParams.from_bias``), the
rounding ``spnas.quantize.simulate.lowered_biases`` simulates.  Layers of ``plan.float_layers``
are left unannotated: float weights, with their output still on the plan's grid (the observer of
the next op's input).  An observer whose tensor cannot be named, or a plan tensor or int8 weight
no observer took, raises ``SpnasError``: the program would not be the plan.
"""

from __future__ import annotations

from spnas.errors import SpnasError
from spnas.folding import FoldedNet, NetOps
from spnas.preprocess import PreprocessSpec
from spnas.quantize.plan import QMAX, QMIN, QuantPlan
from spnas.quantize.simulate import WEIGHT_QMAX, conv_inputs

OBSERVER_PREFIX = "activation_post_process"


def module_key(name: str) -> str:
    """A plan tensor name as a submodule name (module names cannot contain dots)."""
    return name.replace(".", "_")


def plan_module(net: FoldedNet):
    """``net`` as a torch module whose submodules are named after the plan tensors they compute."""
    import torch

    class Layer(torch.nn.Module):
        def __init__(self, conv):
            super().__init__()
            weight = torch.from_numpy(conv.weight.copy())
            if conv.is_linear:
                self.op = torch.nn.Linear(weight.shape[1], weight.shape[0])
            else:
                self.op = torch.nn.Conv2d(weight.shape[1] * conv.groups, weight.shape[0], weight.shape[-1],
                                          conv.stride, conv.padding, groups=conv.groups)
            self.op.weight.data, self.op.bias.data = weight, torch.from_numpy(conv.bias.copy())
            self.relu = conv.relu

        def forward(self, x):
            x = self.op(x)
            return torch.relu(x) if self.relu else x

    class Add(torch.nn.Module):
        def forward(self, out, skip):
            return out + skip

    class Pool(torch.nn.Module):
        def forward(self, x):  # XNNPACK's mean.dim wants the two innermost dims, kept
            return x.mean((-2, -1), keepdim=True).flatten(1)

    class Ops(NetOps):
        def __init__(self, module):
            self.module = module

        def conv(self, conv, x):
            return self.module.layers[module_key(conv.name)](x)

        def add(self, name, out, skip):
            return self.module.adds[module_key(f"{name}.add")](out, skip)

        def pool(self, x):
            return self.module.pool(x)

    class PlanNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleDict({module_key(conv.name): Layer(conv) for conv in net.layers()})
            self.adds = torch.nn.ModuleDict({module_key(f"{block.name}.add"): Add()
                                             for block in net.blocks if block.residual})
            self.pool = Pool()

        def forward(self, x):
            return net.walk(x, Ops(self))

    return PlanNet().eval()


def _fixed_observers():
    """Observers that hold given quantization parameters (torchao's ``FixedQParamsObserver`` is per tensor)."""
    import torch
    from torchao.quantization.pt2e.observer import FixedQParamsObserver

    def activation(grid):
        return FixedQParamsObserver(grid.scale, grid.zero_point, dtype=torch.int8, qscheme=torch.per_tensor_affine,
                                    quant_min=QMIN, quant_max=QMAX)

    class PerChannelWeights(FixedQParamsObserver):
        def __init__(self, scales):
            super().__init__(1.0, 0, dtype=torch.int8, qscheme=torch.per_channel_symmetric,
                             quant_min=-WEIGHT_QMAX, quant_max=WEIGHT_QMAX)
            self.scale = torch.tensor(scales, dtype=torch.float32)
            self.zero_point = torch.zeros(len(scales), dtype=torch.int64)
            self.ch_axis = 0

    return activation, PerChannelWeights


def _tensor_of(node, names: dict[str, str]) -> str | None:
    """The plan tensor an observed node computes (its weight, for a ``get_attr`` weight node)."""
    if node.op == "placeholder":
        return "input"
    path = node.target if node.op == "get_attr" else list((node.meta.get("nn_module_stack") or {None: ("",)})
                                                          .values())[-1][0]
    parts = path.split(".")
    if parts[0] == "pool":
        return "global_pool"
    return names.get(parts[1]) if len(parts) > 1 else None


def fix_observers(prepared, plan: QuantPlan, folded: FoldedNet) -> None:
    """Replace every observer of a prepared PT2E graph by the plan's grid of the tensor it observes."""
    tensor_names, inputs = folded.tensor_names(), conv_inputs(folded)
    activation, weights = _fixed_observers()
    names = {module_key(name): name for name in tensor_names}
    seen, weighted = set(), set()
    for node in prepared.graph.nodes:
        if node.op != "call_module" or not str(node.target).startswith(OBSERVER_PREFIX):
            continue
        observed = node.args[0]
        name = _tensor_of(observed, names)
        if name is None:
            raise SpnasError(f"ExecuTorch plan lowering: observer of {observed.name} matches no plan tensor")
        if observed.op == "get_attr":
            weighted.add(name)
            setattr(prepared, node.target, weights(plan.layers[name].weight_scales))
        else:
            seen.add(name)
            setattr(prepared, node.target, activation(plan.tensors[name]))
    float_inputs = {inputs[name] for name in plan.float_layers}  # may stay float: only a float layer reads them
    missing = [name for name in tensor_names if name not in seen and name not in float_inputs]
    missing += [f"{name} weights" for name in plan.layers if name not in plan.float_layers and name not in weighted]
    if missing:
        raise SpnasError(f"ExecuTorch plan lowering: no quantizer took {', '.join(missing)}")


def _outside(keys: set[str]):
    """A node filter: False for the nodes of the submodules ``layers.KEY`` (the plan's float layers)."""

    def keep(node) -> bool:
        paths = [path.split(".") for path, _ in (node.meta.get("nn_module_stack") or {}).values()]
        return not any(len(parts) > 1 and parts[0] == "layers" and parts[1] in keys for parts in paths)

    return keep


def quantize_plan(folded: FoldedNet, plan: QuantPlan, spec: PreprocessSpec, export_graph):
    """The batch-1 ``ExportedProgram`` of the plan's int8 program (module docstring); ``export_graph(module,
    spec)`` is the format's ``torch.export``."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    class PlanQuantizer(XNNPACKQuantizer):  # the net is folded: the conv+BatchNorm patterns cannot match, and
        SUPPORTED_PATTERNS = [p for p in XNNPACKQuantizer.SUPPORTED_PATTERNS if "_bn" not in p.name]  # each is
        # matched by torch.export-ing example graphs (~15 % of the int8 program's build)

    quantizer = PlanQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    if plan.float_layers:  # XNNPACKQuantizer.set_module_name(name, None) is not supported: filter them out
        quantizer.set_filter_function(_outside({module_key(name) for name in plan.float_layers}))
    exported = export_graph(plan_module(plan.lowered_net(folded)), spec)
    prepared = prepare_pt2e(exported.module(), quantizer)
    fix_observers(prepared, plan, folded)
    return torch.export.export(convert_pt2e(prepared), exported.example_inputs[0])
