"""``create_model``: timm's model factory for ``spnasnet_100``, over our architecture and weight loaders."""

from __future__ import annotations


def create_model(weights="auto", *, num_classes: int | None = None, features_only: bool = False,
                 calib_pixels=None, spec=None):
    """timm-compatible ``spnasnet_100``, like ``timm.create_model('spnasnet_100', pretrained=...)``.

    ``weights``: "auto" (hub cache, else hub, else random with a warning), "random",
    "hf-hub:ORG/REPO", a timm folder (``config.json`` + ``model.safetensors`` or
    ``pytorch_model.bin``), a local ``.safetensors`` / ``.pth`` / ``.bin``, or a resolved
    ``spnas.weights.Checkpoint``.  The classifier size is the checkpoint's own (``classifier.weight``);
    a different ``num_classes`` (0: pooled features) or ``features_only`` loads the backbone and
    drops the head, as timm does.  ``calib_pixels`` (uint8 crops, preprocessed with ``spec``)
    re-estimate BatchNorm for random weights.  The returned model is in eval mode and carries
    ``weights_info`` and ``checkpoint``.
    """
    from spnas.model import SPNasNet
    from spnas.weights import Checkpoint, load_checkpoint, resolve_checkpoint

    checkpoint = weights if isinstance(weights, Checkpoint) else resolve_checkpoint(str(weights))
    full = SPNasNet(num_classes=checkpoint.num_classes)
    full.weights_info = load_checkpoint(full, checkpoint, bn_pixels=calib_pixels, spec=spec)
    full.checkpoint = checkpoint
    if (num_classes is None or num_classes == checkpoint.num_classes) and not features_only:
        return full
    model = SPNasNet(num_classes=num_classes if num_classes is not None else checkpoint.num_classes,
                     features_only=features_only)
    state = {k: v for k, v in full.state_dict().items() if k in model.state_dict()
             and v.shape == model.state_dict()[k].shape}
    model.load_state_dict(state, strict=False)
    model.weights_info, model.checkpoint = full.weights_info, checkpoint
    return model.eval()
