"""spnas: export SPNasNet to ONNX, TFLite and CoreML, with parity and latency proof."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__", "create_model"]


def create_model(weights: str = "auto", *, num_classes: int = 1000, features_only: bool = False,
                 calib_pixels=None):
    """timm-compatible ``spnasnet_100``, like ``timm.create_model('spnasnet_100', pretrained=...)``.

    ``weights``: "auto" (hub cache, else hub, else random with a warning), "random",
    "hf-hub:timm/spnasnet_100.rmsp_in1k", or a local ``.safetensors`` / ``.pth`` / ``.bin``.
    Checkpoints are full 1000-class state dicts; with ``num_classes`` != 1000 or
    ``features_only`` the matching subset is loaded (the head is dropped, as timm does).
    ``calib_pixels`` (uint8 crops) re-estimate BatchNorm for random weights.
    The returned model is in eval mode and carries ``weights_info``.
    """
    from spnas.model import SPNasNet
    from spnas.weights import load_weights

    model = SPNasNet(num_classes=num_classes, features_only=features_only)
    if num_classes == 1000 and not features_only:
        model.weights_info = load_weights(model, weights, bn_pixels=calib_pixels)
        return model
    full = SPNasNet()
    model.weights_info = load_weights(full, weights, bn_pixels=calib_pixels)
    state = {k: v for k, v in full.state_dict().items() if k in model.state_dict()
             and v.shape == model.state_dict()[k].shape}
    model.load_state_dict(state, strict=False)
    return model.eval()
